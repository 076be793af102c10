// masked_linear's autograd kernel: a C++ autograd::Function (why C++: see masked_layer/layer_autograd.h).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "masked_layer/layer_autograd.h"
#include "masked_linear/masked_linear.h"

namespace wtext {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MaskedLinearFunction : public torch::autograd::Function<MaskedLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t seed, int64_t layer, double density,
                            c10::string_view pattern, int64_t nm_n, int64_t nm_m, bool keep_masked_weight) {
    static const auto op =
        typed_op<MaskedLinearSignature<std::tuple<at::Tensor, at::Tensor>>>("wtext::masked_linear_forward");
    at::Tensor out, masked_weight;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, masked_weight) = op.call(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m);
    }
    ctx->save_for_backward({x, weight, keep_masked_weight ? masked_weight : at::Tensor()});
    save_mask_arguments(ctx, seed, layer, density, pattern, nm_n, nm_m, bias);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = typed_op<MaskedLinearBackwardOpSignature>("wtext::masked_linear_backward");
    const at::Tensor& grad_out = grad_outputs[0];
    auto [grad_x, grad_weight] = run_backward_op(ctx, op, grad_out);
    // Every dimension but the last (the output features) is a batch dimension.
    std::vector<int64_t> reduce_dims(static_cast<size_t>(std::max<int64_t>(grad_out.dim() - 1, 0)));
    std::iota(reduce_dims.begin(), reduce_dims.end(), int64_t{0});
    return layer_input_gradients<MaskedLinearSignature<at::Tensor>>(std::move(grad_x), std::move(grad_weight),
                                                                     bias_gradient(ctx, grad_out, reduce_dims));
  }
};

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  int64_t seed, int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                                  int64_t nm_m) {
  return MaskedLinearFunction::apply(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m,
                                     keeps_masked_weight(x, weight));
}

}  // namespace

TORCH_LIBRARY_IMPL(wtext, Autograd, m) {
  m.impl("masked_linear", &masked_linear_autograd);
  // As masked_conv2d_forward: only called below autograd; differentiating it directly raises.
  m.impl("masked_linear_forward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace wtext
