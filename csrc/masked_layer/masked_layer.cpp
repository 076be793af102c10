// The masked layer ops' shared pieces (see masked_layer.h).
#include "masked_layer/masked_layer.h"

namespace wtext {

MaskedLayerWeight::MaskedLayerWeight(const at::Tensor& weight, int64_t seed, int64_t layer, double density,
                                     const std::string& pattern, int64_t nm_n, int64_t nm_m)
    : weight_(weight),
      plan_(plan_tied_masks(weight, {layer}, seed, density, pattern, nm_n, nm_m, "multi")),
      kernels_(&tied_mask_kernels(weight.device().type())) {}

at::Tensor MaskedLayerWeight::masked(at::ScalarType dtype, at::MemoryFormat format) const {
  at::Tensor out = at::empty(weight_.sizes(), weight_.options().dtype(dtype).memory_format(format));
  write_masked_views(*kernels_, plan_, weight_, out, channels_last_only(out));
  return out;
}

at::Tensor MaskedLayerWeight::gradient(const at::Tensor& grad_effective_weight) const {
  TORCH_CHECK(grad_effective_weight.sizes() == weight_.sizes() && grad_effective_weight.device() == weight_.device(),
              "the effective weight's gradient must match weight (shape ", weight_.sizes(), ", device ",
              weight_.device(), "); got shape ", grad_effective_weight.sizes(), " on ", grad_effective_weight.device());
  return sum_masked_gradients(*kernels_, plan_, grad_effective_weight, weight_,
                              channels_last_only(grad_effective_weight));
}

at::MemoryFormat layer_memory_format(const at::Tensor& x) {
  const bool channels_last = x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_layer_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must have a floating-point dtype; got x.dtype=",
              x.scalar_type());
  TORCH_CHECK(x.device() == weight.device(), op, ": x and weight must be on the same device; got x.device=",
              x.device(), " and weight.device=", weight.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->device() == weight.device(), op,
                ": bias and weight must be on the same device; got bias.device=", bias->device(),
                " and weight.device=", weight.device());
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()), op, ": bias must have a floating-point dtype; got bias.dtype=",
                bias->scalar_type());
  }
}

void check_bias_shape(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& weight) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->sym_size(0) == weight.sym_size(0), op,
              ": bias must have shape [out] = [", weight.sym_size(0), "]; got bias.shape=", bias->sym_sizes());
}

void check_masked_weight(const char* op, const std::optional<at::Tensor>& masked_weight, const at::Tensor& x,
                         const at::Tensor& weight) {
  if (!masked_weight.has_value()) return;
  TORCH_CHECK(masked_weight->sym_sizes() == weight.sym_sizes(), op, ": masked_weight must have weight's shape ",
              weight.sym_sizes(), "; got masked_weight.shape=", masked_weight->sym_sizes());
  TORCH_CHECK(masked_weight->scalar_type() == x.scalar_type(), op, ": masked_weight must have x's dtype ",
              x.scalar_type(), "; got masked_weight.dtype=", masked_weight->scalar_type());
  TORCH_CHECK(masked_weight->device() == x.device(), op, ": masked_weight must be on x's device ", x.device(),
              "; got masked_weight.device=", masked_weight->device());
}

void check_grad_out(const char* op, const at::Tensor& grad_out, c10::SymIntArrayRef output_shape,
                    const at::Tensor& x) {
  TORCH_CHECK(grad_out.device() == x.device(), op, ": grad_out must be on x's device ", x.device(),
              "; got grad_out.device=", grad_out.device());
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()), op, ": grad_out must have a floating-point dtype (x's is ",
              x.scalar_type(), "); got grad_out.dtype=", grad_out.scalar_type());
  TORCH_CHECK(grad_out.sym_sizes() == output_shape, op, ": grad_out must have the output's shape ", output_shape,
              "; got grad_out.shape=", grad_out.sym_sizes());
}

void check_layer_backward(const char* op, const at::Tensor& grad_out, c10::SymIntArrayRef output_shape,
                          const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& masked_weight,
                          int64_t layer, double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m,
                          std::array<bool, 2> output_mask) {
  check_grad_out(op, grad_out, output_shape, x);
  check_masked_weight(op, masked_weight, x, weight);
  if (output_mask[0] || output_mask[1]) check_mask_plan(weight, layer, density, pattern, nm_n, nm_m, "multi");
}

}  // namespace wtext
