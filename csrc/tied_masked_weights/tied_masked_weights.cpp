// Schemas of the mask ops and their device-independent bodies.
#include "tied_masked_weights/tied_masked_weights.h"

#include <torch/library.h>

#include <array>
#include <vector>

namespace wtext {

namespace {

std::vector<int64_t> stacked_shape(int64_t num_layers, at::IntArrayRef weight_shape) {
  std::vector<int64_t> shape{num_layers};
  shape.insert(shape.end(), weight_shape.begin(), weight_shape.end());
  return shape;
}

// A 4-d tensor stored channels_last ([out, kh, kw, in] in memory) that is not also row-major (in = 1 or
// kh = kw = 1 make the two orders equal, and then no index map is needed).
bool channels_last_only(const at::Tensor& tensor) {
  return tensor.dim() == 4 && !tensor.is_contiguous() && tensor.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Strides of stacked views [L, out, in, kh, kw] of a 4-d weight, each view channels_last.
std::vector<int64_t> stacked_channels_last_strides(const at::Tensor& weight) {
  const int64_t in = weight.size(1), kw = weight.size(3);
  return {weight.numel(), weight.numel() / weight.size(0), 1, kw * in, in};
}

// Marks the per-layer tensor the kernels write or read as channels_last in params (see stored_offset).
void set_channels_last(TiedMaskParams& params, const at::Tensor& like) {
  params.channels_last_in = like.size(1);
  params.channels_last_spatial = like.size(2) * like.size(3);
}

// The weight as the forward kernel reads it: in place when it is stored like the output, else row-major.
at::Tensor weight_for_forward(TiedMaskParams& params, const at::Tensor& weight) {
  if (params.channels_last_in != 0 && channels_last_only(weight)) {
    params.weight_stored_alike = true;
    return weight;
  }
  return weight.contiguous();
}

}  // namespace

at::Tensor mask_op(const TiedMaskKernels& kernels, const at::Tensor& like, int64_t seed, int64_t layer, double density,
                   const std::string& pattern, int64_t nm_n, int64_t nm_m) {
  const std::vector<int64_t> layers{layer};
  const TiedMaskPlan plan = plan_tied_masks(like, layers, seed, density, pattern, nm_n, nm_m, "multi");
  at::Tensor out = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() > 0) kernels.forward(plan.chunks[0], plan.pattern, at::Tensor(), out);
  return out;
}

at::Tensor tied_masked_weights_op(const TiedMaskKernels& kernels, const at::Tensor& weight, at::IntArrayRef layers,
                                  int64_t seed, double density, const std::string& pattern, int64_t nm_n, int64_t nm_m,
                                  const std::string& mode, std::optional<at::ScalarType> dtype) {
  TiedMaskPlan plan = plan_tied_masks(weight, layers, seed, density, pattern, nm_n, nm_m, mode);
  const at::ScalarType out_dtype = dtype.value_or(weight.scalar_type());
  TORCH_CHECK(at::isFloatingType(out_dtype), "dtype must be a floating-point dtype; got dtype=", out_dtype);
  const auto shape = stacked_shape(static_cast<int64_t>(layers.size()), weight.sizes());
  const at::TensorOptions options = weight.options().dtype(out_dtype);
  // The views take the weight's layout: a channels_last weight (a model moved to channels_last) gets channels_last
  // views, which a channels_last convolution takes as they are instead of reordering the weight on every call.
  const bool channels_last = channels_last_only(weight);
  at::Tensor out;
  if (channels_last) {
    out = at::empty_strided(shape, stacked_channels_last_strides(weight), options);
  } else {
    out = at::empty(shape, options);
  }
  if (weight.numel() == 0) return out;
  // The weight is read in place when it is stored like the views (both channels_last), else row-major.
  const at::Tensor weight_read = channels_last ? weight : weight.contiguous();
  int64_t start = 0;
  for (TiedMaskParams& chunk : plan.chunks) {
    if (channels_last) {
      set_channels_last(chunk, weight);
      chunk.weight_stored_alike = true;
    }
    kernels.forward(chunk, plan.pattern, weight_read, out.narrow(0, start, chunk.num_layers));
    start += chunk.num_layers;
  }
  return out;
}

at::Tensor tied_masked_weights_backward_op(const TiedMaskKernels& kernels, const at::Tensor& grad,
                                           const at::Tensor& weight, at::IntArrayRef layers, int64_t seed,
                                           double density, const std::string& pattern, int64_t nm_n, int64_t nm_m,
                                           const std::string& mode) {
  TORCH_CHECK(grad.device() == weight.device(), "grad and weight must be on the same device; got grad.device=",
              grad.device(), " and weight.device=", weight.device());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must have a floating-point dtype; got grad.dtype=",
              grad.scalar_type());
  const auto expected = stacked_shape(static_cast<int64_t>(layers.size()), weight.sizes());
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected), "grad must have shape [len(layers), *weight.shape] = ",
              at::IntArrayRef(expected), "; got grad.shape=", grad.sizes());
  TiedMaskPlan plan = plan_tied_masks(weight, layers, seed, density, pattern, nm_n, nm_m, mode);
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  if (weight.numel() == 0) return grad_weight;
  // The gradient of channels_last views (what unbind's backward stacks for a channels_last model) is read in place;
  // any other layout is made row-major first.
  const bool channels_last = !grad.is_contiguous() && weight.dim() == 4 &&
                             grad.strides() == at::IntArrayRef(stacked_channels_last_strides(weight));
  const at::Tensor grad_read = channels_last ? grad : grad.contiguous();
  int64_t start = 0;
  for (TiedMaskParams& chunk : plan.chunks) {
    if (channels_last) set_channels_last(chunk, weight);
    kernels.backward(chunk, plan.pattern, grad_read.narrow(0, start, chunk.num_layers), grad_weight,
                     /*accumulate=*/start > 0);
    start += chunk.num_layers;
  }
  return grad_weight;
}

TORCH_LIBRARY_FRAGMENT(wtext, m) {
  m.def("mask(Tensor like, int seed, int layer, float density, str pattern, int nm_n, int nm_m) -> Tensor");
  m.def(
      "tied_masked_weights(Tensor weight, int[] layers, int seed, float density, str pattern, int nm_n, int nm_m, "
      "str mode, ScalarType? dtype=None) -> Tensor");
  m.def(
      "tied_masked_weights_backward(Tensor grad, Tensor weight, int[] layers, int seed, float density, str pattern, "
      "int nm_n, int nm_m, str mode) -> Tensor");
}

}  // namespace wtext

namespace wtext {

namespace {

std::array<const TiedMaskKernels*, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)>&
kernel_table() {
  static std::array<const TiedMaskKernels*, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)>
      table{};
  return table;
}

}  // namespace

void register_tied_mask_kernels(c10::DeviceType device_type, const TiedMaskKernels& kernels) {
  kernel_table()[static_cast<size_t>(device_type)] = &kernels;
}

const TiedMaskKernels& tied_mask_kernels(c10::DeviceType device_type) {
  const TiedMaskKernels* kernels = kernel_table()[static_cast<size_t>(device_type)];
  TORCH_CHECK(kernels != nullptr, "wtext has no mask kernels for device type ", device_type,
              " (wtext._C was built without them)");
  return *kernels;
}

at::Tensor masked_weight(const at::Tensor& weight, int64_t seed, int64_t layer, double density,
                         const std::string& pattern, int64_t nm_n, int64_t nm_m, at::ScalarType dtype,
                         at::MemoryFormat format) {
  const int64_t layers[1] = {layer};
  TiedMaskPlan plan = plan_tied_masks(weight, layers, seed, density, pattern, nm_n, nm_m, "multi");
  at::Tensor out = at::empty(weight.sizes(), weight.options().dtype(dtype).memory_format(format));
  if (out.numel() == 0) return out;
  if (channels_last_only(out)) set_channels_last(plan.chunks[0], out);
  const at::Tensor weight_read = weight_for_forward(plan.chunks[0], weight);
  tied_mask_kernels(weight.device().type()).forward(plan.chunks[0], plan.pattern, weight_read, out);
  return out;
}

at::Tensor mask_weight_gradient(const at::Tensor& grad_effective_weight, const at::Tensor& weight, int64_t seed,
                                int64_t layer, double density, const std::string& pattern, int64_t nm_n,
                                int64_t nm_m) {
  TORCH_CHECK(grad_effective_weight.sizes() == weight.sizes() && grad_effective_weight.device() == weight.device(),
              "the effective weight's gradient must match weight (shape ", weight.sizes(), ", device ", weight.device(),
              "); got shape ", grad_effective_weight.sizes(), " on ", grad_effective_weight.device());
  const int64_t layers[1] = {layer};
  TiedMaskPlan plan = plan_tied_masks(weight, layers, seed, density, pattern, nm_n, nm_m, "multi");
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  if (weight.numel() == 0) return grad_weight;
  const bool channels_last = channels_last_only(grad_effective_weight);
  const at::Tensor grad = channels_last ? grad_effective_weight : grad_effective_weight.contiguous();
  if (channels_last) set_channels_last(plan.chunks[0], grad);
  tied_mask_kernels(weight.device().type())
      .backward(plan.chunks[0], plan.pattern, grad, grad_weight, /*accumulate=*/false);
  return grad_weight;
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
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": bias must have shape [out] = [", weight.size(0), "]; got bias.shape=", bias->sizes());
  }
}

}  // namespace wtext
