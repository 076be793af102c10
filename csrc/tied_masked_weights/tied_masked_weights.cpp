// Schemas of the mask ops and their device-independent bodies.
#include "tied_masked_weights/tied_masked_weights.h"

#include <torch/library.h>

#include <array>
#include <utility>
#include <vector>

namespace wtext {

namespace {

std::vector<c10::SymInt> stacked_shape(c10::SymInt num_layers, c10::SymIntArrayRef weight_shape) {
  std::vector<c10::SymInt> shape{std::move(num_layers)};
  shape.insert(shape.end(), weight_shape.begin(), weight_shape.end());
  return shape;
}

// Strides of stacked views [L, out, in, kh, kw] of a 4-d weight, each view channels_last.
std::vector<c10::SymInt> stacked_channels_last_strides(const at::Tensor& weight) {
  const c10::SymInt in = weight.sym_size(1), kw = weight.sym_size(3);
  return {weight.sym_numel(), weight.sym_numel() / weight.sym_size(0), 1, kw * in, in};
}

// Marks the per-layer tensor the kernels write or read as channels_last in params (see stored_offset).
void set_channels_last(TiedMaskParams& params, const at::Tensor& like) {
  params.channels_last_in = like.size(1);
  params.channels_last_spatial = like.size(2) * like.size(3);
}

// The layers of `chunk` in a tensor holding the plan's layers along dim 0. A single chunk is the whole tensor,
// which may then also be one layer without that dim (a masked layer op's weight): no view op on that hot path.
at::Tensor chunk_layers(const at::Tensor& layers, const TiedMaskPlan& plan, int64_t start, int64_t count) {
  return plan.chunks.size() == 1 ? layers : layers.narrow(0, start, count);
}

}  // namespace

bool channels_last_only(const at::Tensor& tensor) {
  return tensor.dim() == 4 && !tensor.is_contiguous() && tensor.is_contiguous(at::MemoryFormat::ChannelsLast);
}

bool stacked_channels_last(const at::Tensor& stacked, const at::Tensor& weight) {
  return weight.dim() == 4 && stacked.dim() == 5 && !stacked.is_contiguous() &&
         stacked.sym_strides() == c10::SymIntArrayRef(stacked_channels_last_strides(weight));
}

// Writes W ⊙ M_l for the plan's layers into out (its layers row-major, or channels_last views when
// `channels_last`; the kernels address either in place). The weight is read in place when it is stored like the
// views, else from a row-major copy.
void write_masked_views(const TiedMaskKernels& kernels, const TiedMaskPlan& plan, const at::Tensor& weight,
                        const at::Tensor& out, bool channels_last) {
  if (weight.numel() == 0) return;
  const bool weight_alike = channels_last && channels_last_only(weight);
  const at::Tensor weight_read = weight_alike ? weight : weight.contiguous();
  int64_t start = 0;
  for (const TiedMaskParams& chunk : plan.chunks) {
    TiedMaskParams params = chunk;
    if (channels_last) {
      set_channels_last(params, weight);
      params.weight_stored_alike = weight_alike;
    }
    kernels.forward(params, plan.pattern, weight_read, chunk_layers(out, plan, start, params.num_layers));
    start += params.num_layers;
  }
}

// dW = sum_l grad_l ⊙ M_l over the plan's layers, in weight's dtype. grad holds the layers' gradients, read in
// place when they are channels_last views (`channels_last`: what unbind's backward stacks for a channels_last
// model, or a channels_last convolution's weight gradient), else made row-major first.
at::Tensor sum_masked_gradients(const TiedMaskKernels& kernels, const TiedMaskPlan& plan, const at::Tensor& grad,
                                const at::Tensor& weight, bool channels_last) {
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  if (weight.numel() == 0) return grad_weight;
  const at::Tensor grad_read = channels_last ? grad : grad.contiguous();
  int64_t start = 0;
  for (const TiedMaskParams& chunk : plan.chunks) {
    TiedMaskParams params = chunk;
    if (channels_last) set_channels_last(params, weight);
    kernels.backward(params, plan.pattern, chunk_layers(grad_read, plan, start, params.num_layers), grad_weight,
                     /*accumulate=*/start > 0);
    start += params.num_layers;
  }
  return grad_weight;
}

double density_number(const c10::Scalar& density) {
  TORCH_CHECK(!density.isBoolean(), "density must be a real number in (0, 1], not a bool; got density=",
              density.toBool() ? "True" : "False");
  TORCH_CHECK(!density.isComplex(), "density must be a real number in (0, 1]; got the complex density=", density);
  return density.toDouble();
}

void check_mask(const at::Tensor& like, int64_t /*seed*/, int64_t layer, double density, c10::string_view pattern,
                int64_t nm_n, int64_t nm_m) {
  check_mask_plan(like, layer, density, pattern, nm_n, nm_m, "multi");
}

void check_tied_masked_weights(const at::Tensor& weight, at::IntArrayRef layers, int64_t /*seed*/, double density,
                               c10::string_view pattern, int64_t nm_n, int64_t nm_m, c10::string_view mode,
                               std::optional<at::ScalarType> dtype) {
  check_mask_plan(weight, layers, density, pattern, nm_n, nm_m, mode);
  TORCH_CHECK(!dtype.has_value() || at::isFloatingType(*dtype), "dtype must be a floating-point dtype; got dtype=",
              *dtype);
}

void check_tied_masked_weights_backward(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef layers,
                                        int64_t /*seed*/, double density, c10::string_view pattern, int64_t nm_n,
                                        int64_t nm_m, c10::string_view mode) {
  TORCH_CHECK(grad.device() == weight.device(), "grad and weight must be on the same device; got grad.device=",
              grad.device(), " and weight.device=", weight.device());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must have a floating-point dtype; got grad.dtype=",
              grad.scalar_type());
  const auto expected = stacked_shape(static_cast<int64_t>(layers.size()), weight.sym_sizes());
  TORCH_CHECK(grad.sym_sizes() == c10::SymIntArrayRef(expected), "grad must have shape [len(layers), *weight.shape] = ",
              c10::SymIntArrayRef(expected), "; got grad.shape=", grad.sym_sizes());
  check_mask_plan(weight, layers, density, pattern, nm_n, nm_m, mode);
}

at::Tensor empty_tied_masked_weights(const at::Tensor& weight, c10::SymInt num_layers,
                                     std::optional<at::ScalarType> dtype) {
  const auto shape = stacked_shape(std::move(num_layers), weight.sym_sizes());
  const at::TensorOptions options = weight.options().dtype(dtype.value_or(weight.scalar_type()));
  if (channels_last_only(weight)) {
    return at::empty_strided_symint(shape, stacked_channels_last_strides(weight), options);
  }
  return at::empty_symint(shape, options);
}

at::Tensor mask_op(const TiedMaskKernels& kernels, const at::Tensor& like, int64_t seed, int64_t layer, double density,
                   const std::string& pattern, int64_t nm_n, int64_t nm_m) {
  check_mask(like, seed, layer, density, pattern, nm_n, nm_m);
  const TiedMaskPlan plan = plan_tied_masks(like, layer, seed, density, pattern, nm_n, nm_m, "multi");
  at::Tensor out = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() > 0) kernels.forward(plan.chunks[0], plan.pattern, at::Tensor(), out);
  return out;
}

at::Tensor tied_masked_weights_op(const TiedMaskKernels& kernels, const at::Tensor& weight, at::IntArrayRef layers,
                                  int64_t seed, double density, const std::string& pattern, int64_t nm_n, int64_t nm_m,
                                  const std::string& mode, std::optional<at::ScalarType> dtype) {
  check_tied_masked_weights(weight, layers, seed, density, pattern, nm_n, nm_m, mode, dtype);
  const TiedMaskPlan plan = plan_tied_masks(weight, layers, seed, density, pattern, nm_n, nm_m, mode);
  const at::Tensor out = empty_tied_masked_weights(weight, static_cast<int64_t>(layers.size()), dtype);
  write_masked_views(kernels, plan, weight, out, channels_last_only(weight));
  return out;
}

at::Tensor tied_masked_weights_backward_op(const TiedMaskKernels& kernels, const at::Tensor& grad,
                                           const at::Tensor& weight, at::IntArrayRef layers, int64_t seed,
                                           double density, const std::string& pattern, int64_t nm_n, int64_t nm_m,
                                           const std::string& mode) {
  check_tied_masked_weights_backward(grad, weight, layers, seed, density, pattern, nm_n, nm_m, mode);
  const TiedMaskPlan plan = plan_tied_masks(weight, layers, seed, density, pattern, nm_n, nm_m, mode);
  return sum_masked_gradients(kernels, plan, grad, weight, stacked_channels_last(grad, weight));
}

TORCH_LIBRARY_FRAGMENT(wtext, m) {
  // density is a Scalar, not a float, so that a bool can be told apart and refused (density_number).
  m.def("mask(Tensor like, int seed, int layer, Scalar density, str pattern, int nm_n, int nm_m) -> Tensor");
  m.def(
      "tied_masked_weights(Tensor weight, int[] layers, int seed, Scalar density, str pattern, int nm_n, int nm_m, "
      "str mode, ScalarType? dtype=None) -> Tensor");
  m.def(
      "tied_masked_weights_backward(Tensor grad, Tensor weight, int[] layers, int seed, Scalar density, str pattern, "
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

}  // namespace wtext
