// masked_conv2d's autograd kernel: a C++ autograd::Function (why C++: see masked_layer/layer_autograd.h).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "masked_conv2d/masked_conv2d.h"
#include "masked_layer/layer_autograd.h"

namespace wtext {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MaskedConv2dFunction : public torch::autograd::Function<MaskedConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t seed, int64_t layer, double density,
                            c10::string_view pattern, int64_t nm_n, int64_t nm_m, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool keep_masked_weight) {
    static const auto op =
        typed_op<MaskedConv2dSignature<std::tuple<at::Tensor, at::Tensor>>>("wtext::masked_conv2d_forward");
    at::Tensor out, masked_weight;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, masked_weight) =
          op.call(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m, stride, padding, dilation);
    }
    ctx->save_for_backward({x, weight, keep_masked_weight ? masked_weight : at::Tensor()});
    save_mask_arguments(ctx, seed, layer, density, pattern, nm_n, nm_m, bias);
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = typed_op<MaskedConv2dBackwardOpSignature>("wtext::masked_conv2d_backward");
    const at::Tensor& grad_out = grad_outputs[0];
    auto& data = ctx->saved_data;
    const std::vector<int64_t> stride = data["stride"].toIntVector();
    const std::vector<int64_t> padding = data["padding"].toIntVector();
    const std::vector<int64_t> dilation = data["dilation"].toIntVector();
    auto [grad_x, grad_weight] =
        run_backward_op(ctx, op, grad_out, at::IntArrayRef(stride), at::IntArrayRef(padding),
                        at::IntArrayRef(dilation));
    const std::array<int64_t, 3> reduce_dims{0, 2, 3};
    return layer_input_gradients<MaskedConv2dSignature<at::Tensor>>(std::move(grad_x), std::move(grad_weight),
                                                                     bias_gradient(ctx, grad_out, reduce_dims));
  }
};

at::Tensor masked_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  int64_t seed, int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                                  int64_t nm_m, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation) {
  return MaskedConv2dFunction::apply(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m, stride, padding,
                                     dilation, keeps_masked_weight(x, weight));
}

}  // namespace

TORCH_LIBRARY_IMPL(wtext, Autograd, m) {
  m.impl("masked_conv2d", &masked_conv2d_autograd);
  // masked_conv2d_forward is only called below autograd, by the kernel above. Differentiating it directly raises
  // instead of silently dropping the weight's gradient (the dispatcher's default for an op without autograd).
  m.impl("masked_conv2d_forward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace wtext
