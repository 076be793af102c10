// Masked linear layer: x @ (W ⊙ M_layer)^T + b with the mask derived on the device, never stored.
// Like masked_conv2d, the op materializes the masked weight once (fused mask+cast), keeps it for the backward when x
// needs a gradient, and calls the backend GEMM; its registration per dispatch key leaves room for a fused CUDA
// kernel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "masked_linear/masked_linear.h"
#include "masked_layer/layer_autocast.h"

namespace wtext {

namespace {

// Checks the arguments of a masked linear op but the mask's and returns the output's shape [..., out].
std::vector<c10::SymInt> check_linear_arguments(const at::Tensor& x, const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias) {
  check_layer_inputs("masked_linear", x, weight, bias);
  TORCH_CHECK(weight.dim() == 2, "masked_linear: weight must have shape [out, in]; got weight.shape=",
              weight.sym_sizes());
  TORCH_CHECK(x.dim() >= 1 && x.sym_size(-1) == weight.sym_size(1), "masked_linear: x's last dimension must equal in=",
              weight.sym_size(1), " (weight.shape=", weight.sym_sizes(), "); got x.shape=", x.sym_sizes());
  check_bias_shape("masked_linear", bias, weight);
  std::vector<c10::SymInt> output(x.sym_sizes().begin(), x.sym_sizes().end() - 1);
  output.push_back(weight.sym_size(0));
  return output;
}

}  // namespace

std::vector<c10::SymInt> check_masked_linear(const at::Tensor& x, const at::Tensor& weight,
                                             const std::optional<at::Tensor>& bias, int64_t /*seed*/, int64_t layer,
                                             double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m) {
  std::vector<c10::SymInt> output = check_linear_arguments(x, weight, bias);
  check_mask_plan(weight, layer, density, pattern, nm_n, nm_m, "multi");
  return output;
}

void check_masked_linear_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& masked_weight, int64_t /*seed*/, int64_t layer,
                                  double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m,
                                  std::array<bool, 2> output_mask) {
  const std::vector<c10::SymInt> output = check_linear_arguments(x, weight, std::nullopt);
  check_layer_backward("masked_linear_backward", grad_out, output, x, weight, masked_weight, layer, density, pattern,
                       nm_n, nm_m, output_mask);
}

// As masked_conv2d_forward: the forward, also returning the masked weight, for the autograd kernel to keep.
std::tuple<at::Tensor, at::Tensor> masked_linear_forward(const at::Tensor& x, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& bias, int64_t seed,
                                                         int64_t layer, double density, c10::string_view pattern,
                                                         int64_t nm_n, int64_t nm_m) {
  check_masked_linear(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m);
  at::Tensor w = MaskedLayerWeight(weight, seed, layer, density, std::string(pattern), nm_n, nm_m)
                     .masked(x.scalar_type(), at::MemoryFormat::Contiguous);
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->to(x.scalar_type());
  at::Tensor out = at::linear(x, w, b).contiguous();
  return {std::move(out), std::move(w)};
}

at::Tensor masked_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         int64_t seed, int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                         int64_t nm_m) {
  return std::get<0>(masked_linear_forward(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m));
}

LayerGradients masked_linear_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& masked_weight, int64_t seed, int64_t layer,
                                      double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m,
                                      std::array<bool, 2> output_mask) {
  check_masked_linear_backward(grad_out, x, weight, masked_weight, seed, layer, density, pattern, nm_n, nm_m,
                               output_mask);
  LayerGradients gradients;
  if (!output_mask[0] && !output_mask[1]) return gradients;
  const at::Tensor grad_rows = grad_out.to(x.scalar_type()).reshape({-1, weight.size(0)});
  const MaskedLayerWeight mask(weight, seed, layer, density, std::string(pattern), nm_n, nm_m);
  if (output_mask[0]) {
    const at::Tensor w =
        masked_weight.has_value() ? *masked_weight : mask.masked(x.scalar_type(), at::MemoryFormat::Contiguous);
    std::get<0>(gradients) = at::mm(grad_rows, w).reshape(x.sizes()).contiguous();
  }
  if (output_mask[1]) std::get<1>(gradients) = mask.gradient(at::mm(grad_rows.t(), x.reshape({-1, weight.size(1)})));
  return gradients;
}

TORCH_LIBRARY_FRAGMENT(wtext, m) {
  m.def(
      "masked_linear(Tensor x, Tensor weight, Tensor? bias, int seed, int layer, float density, str pattern, "
      "int nm_n, int nm_m) -> Tensor");
  // Internal, as masked_conv2d_forward: the forward that also returns the masked weight, for the autograd kernel.
  m.def(
      "masked_linear_forward(Tensor x, Tensor weight, Tensor? bias, int seed, int layer, float density, str pattern, "
      "int nm_n, int nm_m) -> (Tensor, Tensor)");
  m.def(
      "masked_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? masked_weight, int seed, int layer, "
      "float density, str pattern, int nm_n, int nm_m, bool[] output_mask) -> (Tensor?, Tensor?)");
}

// The bodies only call other ops (the mask kernels of x's device, then the backend's GEMM), so one
// registration serves every backend; a device-specific fused kernel would be registered for its own key, which takes
// precedence. The fake kernels (wtext/ops/fake.py) are registered for Meta, which takes precedence too.
TORCH_LIBRARY_IMPL(wtext, CompositeExplicitAutograd, m) {
  m.impl("masked_linear", &masked_linear);
  m.impl("masked_linear_forward", &masked_linear_forward);
  m.impl("masked_linear_backward",
         [](const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
            const std::optional<at::Tensor>& masked_weight, int64_t seed, int64_t layer, double density,
            c10::string_view pattern, int64_t nm_n, int64_t nm_m, const c10::List<bool>& output_mask) {
           return masked_linear_backward(grad_out, x, weight, masked_weight, seed, layer, density, pattern, nm_n,
                                         nm_m, output_mask_pair("masked_linear_backward", output_mask));
         });
}

constexpr char kMaskedLinear[] = "wtext::masked_linear";

TORCH_LIBRARY_IMPL(wtext, AutocastCPU, m) {
  register_layer_autocast<MaskedLinearSignature<at::Tensor>, kMaskedLinear>(m, c10::DeviceType::CPU);
}

TORCH_LIBRARY_IMPL(wtext, AutocastCUDA, m) {
  register_layer_autocast<MaskedLinearSignature<at::Tensor>, kMaskedLinear>(m, c10::DeviceType::CUDA);
}

}  // namespace wtext
