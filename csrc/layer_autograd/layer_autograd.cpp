// Autograd of masked_conv2d and masked_linear, in C++.
//
// These ops run once per tied application, so their host cost is paid L times per step. Registered from Python
// (torch.library.register_autograd) the forward+backward of one small conv cost 178 us of host time against
// 51 us for F.conv2d (dev CPU), enough to leave a GPU idle between kernels; as a C++ autograd::Function it cost
// 97 us when it moved here, and 64 us after the later host-path work (both dev CPU, one thread). The backward
// calls the registered backward op through the dispatcher, so its autograd formula (wtext/ops/autograd.py) still
// gives double backward. The forward runs the *_forward op, which also returns the masked weight; when x needs a
// gradient it is kept, and the backward's grad_x GEMM reuses it instead of running the mask kernel again.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "tied_masked_weights/tied_masked_weights.h"

namespace wtext {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The mask arguments every masked layer op takes after (x, weight, bias), kept for the backward.
void save_mask_arguments(AutogradContext* ctx, int64_t seed, int64_t layer, double density, c10::string_view pattern,
                         int64_t nm_n, int64_t nm_m, const std::optional<at::Tensor>& bias) {
  ctx->saved_data["seed"] = seed;
  ctx->saved_data["layer"] = layer;
  ctx->saved_data["density"] = density;
  ctx->saved_data["pattern"] = std::string(pattern);
  ctx->saved_data["nm_n"] = nm_n;
  ctx->saved_data["nm_m"] = nm_m;
  ctx->saved_data["bias_dtype"] = bias.has_value() ? static_cast<int64_t>(bias->scalar_type()) : int64_t{-1};
}

// Runs a backward op. Unless the backward itself is being recorded (create_graph=True, for double backward), the
// op's autograd kernel is skipped: it is the Python formula of wtext/ops/autograd.py, and entering the interpreter
// on every backward cost ~15 us of host time (dev CPU, small conv fwd+bwd through torch.ops: 77 -> 62 us).
template <typename Call>
auto call_backward_op(const Call& call) {
  if (at::GradMode::is_enabled()) return call();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return call();
}

// Which of (x, weight) this backward pass needs a gradient for: in a DEQ's adjoint solve only x, for a frozen
// weight or a network's input layer only one. The backward op then skips the other GEMM (one of the three
// GEMM-sized passes of a conv's fwd+bwd).
std::array<bool, 2> requested_gradients(AutogradContext* ctx) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
}

// The backward op's optional outputs as the (possibly undefined) tensors autograd expects.
std::tuple<at::Tensor, at::Tensor> unpack(const LayerGradients& gradients) {
  return {std::get<0>(gradients).value_or(at::Tensor()), std::get<1>(gradients).value_or(at::Tensor())};
}

// dL/dbias = grad_out summed over every dimension but the channel one, in the bias's dtype. An unbatched linear
// layer's grad_out is the channel dimension alone: nothing to sum, and at::sum over an empty list of dimensions would
// sum over all of them (a scalar, which autograd rejects as bias's gradient).
at::Tensor bias_gradient(AutogradContext* ctx, const at::Tensor& grad_out, at::IntArrayRef reduce_dims) {
  const int64_t bias_dtype = ctx->saved_data["bias_dtype"].toInt();
  if (bias_dtype < 0 || !ctx->needs_input_grad(2)) return at::Tensor();
  const auto dtype = static_cast<at::ScalarType>(bias_dtype);
  if (reduce_dims.empty()) return grad_out.to(dtype);
  return at::sum(grad_out, reduce_dims, /*keepdim=*/false, dtype);
}

// A masked weight up to this size is kept whatever x's size: at most 4 MB in float32, which no training step
// notices, while regenerating it costs a mask pass (0.7-1.0 ms for a 256x256x3x3 weight on a 2-core CPU, row-major
// and channels_last).
constexpr int64_t kAlwaysKeptElements = int64_t{1} << 20;

// Whether the forward keeps W ⊙ M for the backward. Only the grad_x GEMM reads it, so it is kept only when x may
// need a gradient (a backward asking for the weight's alone cannot be foreseen here and pays one unused tensor).
// A large weight is kept only when it is no larger than x, which the autograd saves anyway: that bounds the extra
// saved memory by what the layer already holds. A wide linear layer fed a few rows (x [8, 4096] against
// W [4096, 4096], 64 MB in float32, per application) regenerates it instead. Decided before apply(), which runs the
// forward with grad mode off. (ctx->needs_input_grad(0) inside forward() is no substitute: when apply() is called
// with grad mode off, under torch.no_grad(), the node gets no edges and the call throws "Index out of range".)
// Sizes are compared as SymInts: under torch.compile with dynamic shapes they are symbolic (numel() would throw),
// and the comparison becomes a guard.
bool keeps_masked_weight(const at::Tensor& x, const at::Tensor& weight) {
  if (!at::GradMode::is_enabled() || !x.requires_grad()) return false;
  const c10::SymInt weight_size = weight.sym_numel();
  return weight_size <= c10::SymInt(kAlwaysKeptElements) || weight_size <= x.sym_numel();
}

// A saved masked weight, or None when the forward did not keep one.
std::optional<at::Tensor> optional_if_defined(const at::Tensor& masked_weight) {
  return masked_weight.defined() ? std::optional<at::Tensor>(masked_weight) : std::nullopt;
}

class MaskedConv2dFunction : public torch::autograd::Function<MaskedConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t seed, int64_t layer, double density,
                            c10::string_view pattern, int64_t nm_n, int64_t nm_m, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool keep_masked_weight) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("wtext::masked_conv2d_forward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, int64_t,
                             double, c10::string_view, int64_t, int64_t, at::IntArrayRef, at::IntArrayRef,
                             at::IntArrayRef)>();
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
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("wtext::masked_conv2d_backward", "")
                         .typed<LayerGradients(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, int64_t, int64_t, double,
                                               c10::string_view, int64_t, int64_t, at::IntArrayRef, at::IntArrayRef,
                                               at::IntArrayRef, std::array<bool, 2>)>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_out = grad_outputs[0];
    auto& data = ctx->saved_data;
    const std::string pattern = data["pattern"].toStringRef();
    const std::vector<int64_t> stride = data["stride"].toIntVector();
    const std::vector<int64_t> padding = data["padding"].toIntVector();
    const std::vector<int64_t> dilation = data["dilation"].toIntVector();
    const std::array<bool, 2> output_mask = requested_gradients(ctx);
    at::Tensor grad_x, grad_weight;
    if (output_mask[0] || output_mask[1]) {
      std::tie(grad_x, grad_weight) = unpack(call_backward_op([&] {
        return op.call(grad_out, saved[0], saved[1], optional_if_defined(saved[2]), data["seed"].toInt(),
                       data["layer"].toInt(), data["density"].toDouble(), pattern, data["nm_n"].toInt(),
                       data["nm_m"].toInt(), stride, padding, dilation, output_mask);
      }));
    }
    const std::array<int64_t, 3> reduce_dims{0, 2, 3};
    // x, weight, bias; then none for the 10 non-tensor arguments (seed ... dilation, keep_masked_weight)
    return {grad_x,       grad_weight,  bias_gradient(ctx, grad_out, reduce_dims),
            at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

class MaskedLinearFunction : public torch::autograd::Function<MaskedLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t seed, int64_t layer, double density,
                            c10::string_view pattern, int64_t nm_n, int64_t nm_m, bool keep_masked_weight) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("wtext::masked_linear_forward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const std::optional<at::Tensor>&, int64_t, int64_t,
                                                                   double, c10::string_view, int64_t, int64_t)>();
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
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("wtext::masked_linear_backward", "")
                         .typed<LayerGradients(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, int64_t, int64_t, double,
                                               c10::string_view, int64_t, int64_t, std::array<bool, 2>)>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_out = grad_outputs[0];
    auto& data = ctx->saved_data;
    const std::string pattern = data["pattern"].toStringRef();
    const std::array<bool, 2> output_mask = requested_gradients(ctx);
    at::Tensor grad_x, grad_weight;
    if (output_mask[0] || output_mask[1]) {
      std::tie(grad_x, grad_weight) = unpack(call_backward_op([&] {
        return op.call(grad_out, saved[0], saved[1], optional_if_defined(saved[2]), data["seed"].toInt(),
                       data["layer"].toInt(), data["density"].toDouble(), pattern, data["nm_n"].toInt(),
                       data["nm_m"].toInt(), output_mask);
      }));
    }
    std::vector<int64_t> reduce_dims(static_cast<size_t>(std::max<int64_t>(grad_out.dim() - 1, 0)));
    for (size_t d = 0; d < reduce_dims.size(); ++d) reduce_dims[d] = static_cast<int64_t>(d);
    // x, weight, bias; then none for the 7 non-tensor arguments (seed ... nm_m, keep_masked_weight)
    return {grad_x,       grad_weight,  bias_gradient(ctx, grad_out, reduce_dims),
            at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor masked_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  int64_t seed, int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                                  int64_t nm_m, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation) {
  return MaskedConv2dFunction::apply(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m, stride, padding,
                                     dilation, keeps_masked_weight(x, weight));
}

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  int64_t seed, int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                                  int64_t nm_m) {
  return MaskedLinearFunction::apply(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m,
                                     keeps_masked_weight(x, weight));
}

}  // namespace

TORCH_LIBRARY_IMPL(wtext, Autograd, m) {
  m.impl("masked_conv2d", &masked_conv2d_autograd);
  m.impl("masked_linear", &masked_linear_autograd);
  // The *_forward ops are only called below autograd, by the two kernels above. Differentiating one directly raises
  // instead of silently dropping the weight's gradient (the dispatcher's default for an op without autograd).
  m.impl("masked_conv2d_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("masked_linear_forward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace wtext
