// Masked 2-d convolution: conv2d(x, W ⊙ M_layer) with the mask derived on the device, never stored.
//
// The masked weight is materialized (one small fused mask+cast kernel, written directly in x's dtype and layout) and
// handed to the backend's convolution (cuDNN on CUDA, oneDNN/native on CPU). Under autograd the masked weight is kept
// for the backward's grad_x GEMM when x needs a gradient (the mask itself is never stored); in backward one kernel
// masks the weight gradient, reading it in place in the layout the backend returns. The forward and backward are ops
// of their own, so a direct implicit-GEMM kernel that applies the mask while loading weight tiles can be registered
// for the CUDA key without touching the schema or the Python side.
#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>

#include "masked_conv2d/masked_conv2d.h"
#include "masked_layer/layer_autocast.h"

namespace wtext {

namespace {

// Checks the arguments of a masked conv op but the mask's (errors name the argument and the value) and returns the
// output's shape [N, out, H_out, W_out]. Sizes are bounded before any arithmetic on them, so no int64 expression
// wraps around (with a huge padding or dilation it would, and the backend would allocate a wrong-sized output or
// crash).
std::vector<c10::SymInt> check_conv_arguments(const at::Tensor& x, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_layer_inputs("masked_conv2d", x, weight, bias);
  TORCH_CHECK(x.dim() == 4, "masked_conv2d: x must have shape [N, C, H, W]; got x.shape=", x.sym_sizes());
  TORCH_CHECK(weight.dim() == 4, "masked_conv2d: weight must have shape [out, in, kh, kw]; got weight.shape=",
              weight.sym_sizes());
  TORCH_CHECK(x.sym_size(1) == weight.sym_size(1), "masked_conv2d: x has C=", x.sym_size(1),
              " channels but weight expects in=", weight.sym_size(1), " (weight.shape=", weight.sym_sizes(),
              ", x.shape=", x.sym_sizes(), "; groups=1 only)");
  check_bias_shape("masked_conv2d", bias, weight);
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1,
              "masked_conv2d: stride must be two ints >= 1; got stride=", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0,
              "masked_conv2d: padding must be two ints >= 0; got padding=", padding);
  TORCH_CHECK(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1,
              "masked_conv2d: dilation must be two ints >= 1; got dilation=", dilation);
  // The backends' convolutions take these and the spatial sizes as 32-bit ints (cuDNN's descriptors; PyTorch's CPU
  // convolution computes a negative output size from a padded extent of 2^31): larger ones are refused here, before
  // they wrap around there.
  constexpr int64_t kMaxSpatial = std::numeric_limits<int32_t>::max();
  for (const auto& [name, values] : {std::pair<const char*, at::IntArrayRef>{"stride", stride},
                                     {"padding", padding}, {"dilation", dilation}}) {
    TORCH_CHECK(values[0] <= kMaxSpatial && values[1] <= kMaxSpatial, "masked_conv2d: ", name,
                " must be < 2^31 (convolution backends take 32-bit sizes); got ", name, "=", values);
  }
  // PyTorch's own convolutions refuse an empty weight or return a wrong shape for one (no input channels gives
  // [N, 0, H, W]), so the op does not take one either.
  TORCH_CHECK(weight.sym_numel() > 0, "masked_conv2d: weight must not be empty (at least one output channel, one input "
              "channel and a 1x1 kernel); got weight.shape=", weight.sym_sizes());
  std::vector<c10::SymInt> output{x.sym_size(0), weight.sym_size(0)};
  for (int d = 0; d < 2; ++d) {
    const c10::SymInt size = x.sym_size(2 + d), kernel_size = weight.sym_size(2 + d);
    TORCH_CHECK(size <= kMaxSpatial && kernel_size <= kMaxSpatial, "masked_conv2d: x and weight must be smaller than "
                "2^31 along each spatial dimension (convolution backends take 32-bit sizes); got x.shape=",
                x.sym_sizes(), ", weight.shape=", weight.sym_sizes());
    // Every term is now below 2^31 (2^32 for 2 * padding): no int64 overflow.
    const c10::SymInt padded = size + 2 * padding[d];
    const c10::SymInt kernel = dilation[d] * (kernel_size - 1) + 1;
    TORCH_CHECK(padded <= kMaxSpatial, "masked_conv2d: the padded input must be smaller than 2^31 along each spatial "
                "dimension (convolution backends take 32-bit sizes); got x's size ", size, " + 2*padding = ", padded,
                " along spatial dimension ", d, " (x.shape=", x.sym_sizes(), ", padding=", padding, ")");
    TORCH_CHECK(padded >= kernel, "masked_conv2d: the padded input (", size, " + 2*", padding[d],
                ") is smaller than the dilated kernel (", kernel, ") along spatial dimension ", d, "; x.shape=",
                x.sym_sizes(), ", weight.shape=", weight.sym_sizes(), ", padding=", padding, ", dilation=", dilation);
    output.push_back((padded - kernel) / stride[d] + 1);
  }
  // Symbolic sizes (under torch.compile) are left to the kernel: this check would add a guard to every compiled call.
  if (const std::optional<at::IntArrayRef> sizes = c10::asIntArrayRefSlowOpt(output)) {
    int64_t output_numel = 1;
    for (const int64_t size : *sizes) {
      TORCH_CHECK(!c10::mul_overflows(output_numel, size, &output_numel),
                  "masked_conv2d: the output [N, out, H_out, W_out] = ", *sizes,
                  " has more elements than int64 can count; check padding=", padding, ", stride=", stride,
                  " and dilation=", dilation, " (x.shape=", x.sym_sizes(), ", weight.shape=", weight.sym_sizes(), ")");
    }
  }
  return output;
}

}  // namespace

std::vector<c10::SymInt> check_masked_conv2d(const at::Tensor& x, const at::Tensor& weight,
                                             const std::optional<at::Tensor>& bias, int64_t /*seed*/, int64_t layer,
                                             double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation) {
  std::vector<c10::SymInt> output = check_conv_arguments(x, weight, bias, stride, padding, dilation);
  check_mask_plan(weight, layer, density, pattern, nm_n, nm_m, "multi");
  return output;
}

void check_masked_conv2d_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& masked_weight, int64_t /*seed*/, int64_t layer,
                                  double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  std::array<bool, 2> output_mask) {
  const std::vector<c10::SymInt> output = check_conv_arguments(x, weight, std::nullopt, stride, padding, dilation);
  check_layer_backward("masked_conv2d_backward", grad_out, output, x, weight, masked_weight, layer, density, pattern,
                       nm_n, nm_m, output_mask);
}

// The forward, also returning the masked weight it computed. masked_conv2d's autograd kernel calls this and keeps
// the masked weight for the backward's grad_x GEMM when x needs a gradient, instead of regenerating it there (one
// mask kernel and launch fewer per backward; a DEQ's adjoint solve runs ~20 backward passes through one forward).
std::tuple<at::Tensor, at::Tensor> masked_conv2d_forward(const at::Tensor& x, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& bias, int64_t seed,
                                                         int64_t layer, double density, c10::string_view pattern,
                                                         int64_t nm_n, int64_t nm_m, at::IntArrayRef stride,
                                                         at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_masked_conv2d(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m, stride, padding, dilation);
  // Matching x's layout avoids a weight reorder inside the convolution backend.
  at::Tensor w = MaskedLayerWeight(weight, seed, layer, density, std::string(pattern), nm_n, nm_m)
                     .masked(x.scalar_type(), layer_memory_format(x));
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->to(x.scalar_type());
  at::Tensor out = at::conv2d(x, w, b, stride, padding, dilation, 1).contiguous(layer_memory_format(x));
  return {std::move(out), std::move(w)};
}

// Without autograd (inference tensors, below-autograd callers) the masked weight is simply dropped.
at::Tensor masked_conv2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         int64_t seed, int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                         int64_t nm_m, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  return std::get<0>(
      masked_conv2d_forward(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m, stride, padding, dilation));
}

LayerGradients masked_conv2d_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& masked_weight, int64_t seed, int64_t layer,
                                      double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                      std::array<bool, 2> output_mask) {
  check_masked_conv2d_backward(grad_out, x, weight, masked_weight, seed, layer, density, pattern, nm_n, nm_m, stride,
                               padding, dilation, output_mask);
  LayerGradients gradients;
  if (!output_mask[0] && !output_mask[1]) return gradients;
  const at::MemoryFormat format = layer_memory_format(x);
  const MaskedLayerWeight mask(weight, seed, layer, density, std::string(pattern), nm_n, nm_m);
  // grad_x is the only GEMM that reads the weight's values; the weight gradient needs its shape and layout alone,
  // so without grad_x and without a kept masked weight an uninitialized tensor stands in and no mask kernel runs.
  at::Tensor w;
  if (masked_weight.has_value()) {
    w = *masked_weight;
  } else if (output_mask[0]) {
    w = mask.masked(x.scalar_type(), format);
  } else {
    w = at::empty(weight.sizes(), x.options().memory_format(format));
  }
  const std::array<int64_t, 2> no_output_padding{0, 0};
  // Only the requested GEMMs run: a DEQ's adjoint solve asks for grad_x alone in every iteration, a frozen weight
  // or a network's first layer for one of the two.
  auto [grad_x, grad_w, unused_grad_bias] = at::convolution_backward(
      grad_out.to(x.scalar_type()).contiguous(format), x, w, std::nullopt, stride, padding, dilation,
      /*transposed=*/false, no_output_padding, /*groups=*/1, {output_mask[0], output_mask[1], false});
  if (output_mask[0]) std::get<0>(gradients) = grad_x.contiguous(format);
  if (output_mask[1]) std::get<1>(gradients) = mask.gradient(grad_w);
  return gradients;
}

TORCH_LIBRARY_FRAGMENT(wtext, m) {
  m.def(
      "masked_conv2d(Tensor x, Tensor weight, Tensor? bias, int seed, int layer, float density, str pattern, "
      "int nm_n, int nm_m, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // Internal: the forward that also returns the masked weight, called by masked_conv2d's autograd kernel below
  // autograd (differentiating it directly raises). masked_weight in the backward is that tensor, or None to
  // regenerate it.
  m.def(
      "masked_conv2d_forward(Tensor x, Tensor weight, Tensor? bias, int seed, int layer, float density, str pattern, "
      "int nm_n, int nm_m, int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)");
  m.def(
      "masked_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? masked_weight, int seed, int layer, "
      "float density, str pattern, int nm_n, int nm_m, int[2] stride, int[2] padding, int[2] dilation, "
      "bool[] output_mask) -> (Tensor?, Tensor?)");
}

// The bodies only call other ops (the mask kernels of x's device, then the backend's convolution), so one
// registration serves every backend; a device-specific fused kernel would be registered for its own key, which takes
// precedence. The fake kernels (wtext/ops/fake.py) are registered for Meta, which takes precedence too.
TORCH_LIBRARY_IMPL(wtext, CompositeExplicitAutograd, m) {
  m.impl("masked_conv2d", &masked_conv2d);
  m.impl("masked_conv2d_forward", &masked_conv2d_forward);
  m.impl("masked_conv2d_backward",
         [](const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
            const std::optional<at::Tensor>& masked_weight, int64_t seed, int64_t layer, double density,
            c10::string_view pattern, int64_t nm_n, int64_t nm_m, at::IntArrayRef stride, at::IntArrayRef padding,
            at::IntArrayRef dilation, const c10::List<bool>& output_mask) {
           return masked_conv2d_backward(grad_out, x, weight, masked_weight, seed, layer, density, pattern, nm_n,
                                         nm_m, stride, padding, dilation,
                                         output_mask_pair("masked_conv2d_backward", output_mask));
         });
}

constexpr char kMaskedConv2d[] = "wtext::masked_conv2d";

TORCH_LIBRARY_IMPL(wtext, AutocastCPU, m) {
  register_layer_autocast<MaskedConv2dSignature<at::Tensor>, kMaskedConv2d>(m, c10::DeviceType::CPU);
}

TORCH_LIBRARY_IMPL(wtext, AutocastCUDA, m) {
  register_layer_autocast<MaskedConv2dSignature<at::Tensor>, kMaskedConv2d>(m, c10::DeviceType::CUDA);
}

}  // namespace wtext
