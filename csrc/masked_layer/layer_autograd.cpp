// The autograd kernels' shared pieces (see layer_autograd.h).
#include "masked_layer/layer_autograd.h"

#include <string>

namespace wtext {

using torch::autograd::AutogradContext;

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

std::array<bool, 2> requested_gradients(AutogradContext* ctx) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
}

// An unbatched linear layer's grad_out is the channel dimension alone: nothing to sum, and at::sum over an empty
// list of dimensions would sum over all of them (a scalar, which autograd rejects as bias's gradient).
at::Tensor bias_gradient(AutogradContext* ctx, const at::Tensor& grad_out, at::IntArrayRef reduce_dims) {
  const int64_t bias_dtype = ctx->saved_data["bias_dtype"].toInt();
  if (bias_dtype < 0 || !ctx->needs_input_grad(2)) return at::Tensor();
  const auto dtype = static_cast<at::ScalarType>(bias_dtype);
  if (reduce_dims.empty()) return grad_out.to(dtype);
  return at::sum(grad_out, reduce_dims, /*keepdim=*/false, dtype);
}

// A masked weight up to this size is kept whatever x's size: at most 4 MB in float32, which no training step
// notices, while regenerating it costs a mask pass (about a millisecond for a 256x256x3x3 weight on a 2-core CPU).
constexpr int64_t kAlwaysKeptElements = int64_t{1} << 20;

// Only the grad_x GEMM reads W ⊙ M, so it is kept only when x may need a gradient (a backward asking for the
// weight's alone cannot be foreseen here and pays one unused tensor). A large weight is kept only when it is no
// larger than x, which the autograd saves anyway: that bounds the extra saved memory by what the layer already
// holds. A wide linear layer fed a few rows (x [8, 4096] against W [4096, 4096], 64 MB in float32, per application)
// regenerates it instead. (ctx->needs_input_grad(0) inside forward() is no substitute: when apply() is called with
// grad mode off, under torch.no_grad(), the node gets no edges and the call throws "Index out of range".) Sizes are
// compared as SymInts: under torch.compile with dynamic shapes they are symbolic (numel() would throw), and the
// comparison becomes a guard.
bool keeps_masked_weight(const at::Tensor& x, const at::Tensor& weight) {
  if (!at::GradMode::is_enabled() || !x.requires_grad()) return false;
  const c10::SymInt weight_size = weight.sym_numel();
  return weight_size <= c10::SymInt(kAlwaysKeptElements) || weight_size <= x.sym_numel();
}

std::optional<at::Tensor> optional_if_defined(const at::Tensor& masked_weight) {
  return masked_weight.defined() ? std::optional<at::Tensor>(masked_weight) : std::nullopt;
}

}  // namespace wtext
