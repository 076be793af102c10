// Schemas of the learned and packed mask ops, their argument checks and device-independent bodies, and the
// thresholds op (ATen ops only, for every device).
#include "learned_masks/learned_masks.h"

#include <torch/library.h>

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "tied_masked_weights/tied_masked_weights.h"

namespace wtext {

namespace {

// [L, *weight.shape], as the views' and the stacked gradient's shape is shown in errors.
std::vector<c10::SymInt> stacked_shape(const c10::SymInt& num_layers, const at::Tensor& weight) {
  std::vector<c10::SymInt> shape{num_layers};
  shape.insert(shape.end(), weight.sym_sizes().begin(), weight.sym_sizes().end());
  return shape;
}

// "[L, 6, 8]" for a weight of shape [6, 8]: the shape a stacked tensor of L applications must have.
std::string stacked_shape_text(const at::Tensor& weight) {
  std::string text = "[L";
  for (const c10::SymInt& size : weight.sym_sizes()) text += c10::str(", ", size);
  return text + "]";
}

// A symbolic size (under torch.compile) is left to the kernel: comparing it would add a guard to every compiled
// call, and the real op checks it again with concrete sizes.
void check_masked_numel(const c10::SymInt& numel, const char* what, c10::SymIntArrayRef shape) {
  if (const std::optional<int64_t> concrete = numel.maybe_as_int()) {
    TORCH_CHECK(static_cast<uint64_t>(*concrete) < (1ULL << 32), what,
                " must have fewer than 2^32 elements per application for masking (the order keys and the kernels "
                "index them in 32 bits); got ", *concrete, " elements (shape ", shape, ")");
  }
}

// The weight a mask is applied to: floating, rank >= 2, fewer than 2^32 elements (as check_mask_plan's weight).
void check_weight(const at::Tensor& weight) {
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()),
              "weight must have a floating-point dtype (float64, float32, float16 or bfloat16); got weight.dtype=",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() >= 2, "weight must have rank >= 2 ([out, in, ...]); got weight.dim()=", weight.dim(),
              " with shape ", weight.sym_sizes());
  check_masked_numel(weight.sym_numel(), "weight", weight.sym_sizes());
}

void check_same_device(const at::Tensor& tensor, const char* name, const at::Tensor& weight) {
  TORCH_CHECK(tensor.device() == weight.device(), name, " and weight must be on the same device; got ", name,
              ".device=", tensor.device(), " and weight.device=", weight.device());
}

// scores float32 [L, *weight.shape] with L >= 1, and thresholds int64 [L], on weight's device.
void check_scores_and_thresholds(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& thresholds) {
  check_same_device(scores, "scores", weight);
  check_same_device(thresholds, "thresholds", weight);
  TORCH_CHECK(scores.scalar_type() == at::kFloat, "scores must be float32; got scores.dtype=", scores.scalar_type());
  TORCH_CHECK(scores.dim() == weight.dim() + 1 && scores.sym_sizes().slice(1) == weight.sym_sizes(),
              "scores must have shape [L, *weight.shape] = ", stacked_shape_text(weight), " (one score per weight "
              "element and application); got scores.shape=", scores.sym_sizes());
  TORCH_CHECK(scores.sym_size(0) >= 1, "scores must hold at least one application (L = scores.shape[0] >= 1); got "
              "scores.shape=", scores.sym_sizes());
  TORCH_CHECK(thresholds.scalar_type() == at::kLong,
              "thresholds must be int64 (the order keys of learned_mask_thresholds); got thresholds.dtype=",
              thresholds.scalar_type());
  TORCH_CHECK(thresholds.dim() == 1, "thresholds must have shape [L] = [", scores.sym_size(0),
              "] (one per application of scores); got thresholds.shape=", thresholds.sym_sizes());
  TORCH_CHECK(thresholds.sym_size(0) == scores.sym_size(0), "thresholds must have shape [L] = [", scores.sym_size(0),
              "] (one per application of scores); got thresholds.shape=", thresholds.sym_sizes());
}

// bits uint8 [L, ceil(weight.numel() / 8)] with L >= 1, on weight's device. A frozen checkpoint whose bit count does
// not match the weight it is loaded into fails here, with both shapes in the message.
void check_bits(const at::Tensor& weight, const at::Tensor& bits) {
  check_same_device(bits, "bits", weight);
  TORCH_CHECK(bits.scalar_type() == at::kByte, "bits must be uint8 (packed masks, 8 elements per byte); got "
              "bits.dtype=", bits.scalar_type());
  const c10::SymInt bytes = (weight.sym_numel() + 7) / 8;
  const auto shape_error = [&] {
    return c10::str("bits must have shape [L, ceil(weight.numel() / 8)] = [L, ", bytes, "] (L >= 1 packed masks of ",
                    weight.sym_numel(), " bits, one per element of weight.shape=", weight.sym_sizes(),
                    ", 8 per byte); got bits.shape=", bits.sym_sizes());
  };
  TORCH_CHECK(bits.dim() == 2, shape_error());
  TORCH_CHECK(bits.sym_size(1) == bytes, shape_error());
  TORCH_CHECK(bits.sym_size(0) >= 1, shape_error());
}

// A backward op's grad: floating, weight's device, the views' shape [L, *weight.shape].
void check_grad(const at::Tensor& grad, const at::Tensor& weight, const c10::SymInt& num_layers) {
  check_same_device(grad, "grad", weight);
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must have a floating-point dtype; got grad.dtype=",
              grad.scalar_type());
  const std::vector<c10::SymInt> expected = stacked_shape(num_layers, weight);
  TORCH_CHECK(grad.sym_sizes() == c10::SymIntArrayRef(expected),
              "grad must have the views' shape [L, *weight.shape] = ", c10::SymIntArrayRef(expected),
              "; got grad.shape=", grad.sym_sizes());
}

void check_dtype(std::optional<at::ScalarType> dtype) {
  TORCH_CHECK(!dtype.has_value() || at::isFloatingType(*dtype), "dtype must be a floating-point dtype; got dtype=",
              *dtype);
}

// The params of a call over `weight` with L applications, its views or gradient laid out channels_last when
// `channels_last`.
LearnedMaskParams make_params(const at::Tensor& weight, int64_t num_layers, bool channels_last) {
  LearnedMaskParams params;
  params.numel = weight.numel();
  params.num_layers = num_layers;
  params.packed_bytes = (params.numel + 7) / 8;
  if (channels_last) {
    params.reduction = params.numel / weight.size(0);
    params.channels_last_in = weight.size(1);
    params.channels_last_spatial = weight.size(2) * weight.size(3);
  }
  return params;
}

// The weight as a forward reads it: in place when it is stored like the views (a channels_last model), else a
// row-major copy (none when it is row-major already).
at::Tensor weight_for_views(const at::Tensor& weight, LearnedMaskParams& params) {
  params.weight_stored_alike = channels_last_only(weight);
  return params.weight_stored_alike ? weight : weight.contiguous();
}

// The stacked gradient as a backward reads it: channels_last views in place (what unbind's backward stacks for
// channels_last views), anything else row-major. The weight is read in place when stored like that gradient.
struct BackwardInputs {
  LearnedMaskParams params;
  at::Tensor grad;
  at::Tensor weight;
};

BackwardInputs backward_inputs(const at::Tensor& grad, const at::Tensor& weight, int64_t num_layers,
                               bool reads_weight) {
  const bool channels_last = stacked_channels_last(grad, weight);
  BackwardInputs inputs{make_params(weight, num_layers, channels_last), channels_last ? grad : grad.contiguous(),
                        weight};
  if (reads_weight) {
    inputs.params.weight_stored_alike = channels_last && channels_last_only(weight);
    if (!inputs.params.weight_stored_alike) inputs.weight = weight.contiguous();
  }
  return inputs;
}

}  // namespace

void check_learned_mask_thresholds(const at::Tensor& scores, int64_t kept) {
  TORCH_CHECK(scores.scalar_type() == at::kFloat, "scores must be float32; got scores.dtype=", scores.scalar_type());
  TORCH_CHECK(scores.dim() >= 3, "scores must have shape [L, *weight.shape] for a weight of rank >= 2 (so "
              "scores.dim() >= 3); got scores.shape=", scores.sym_sizes());
  TORCH_CHECK(scores.sym_size(0) >= 1, "scores must hold at least one application (L = scores.shape[0] >= 1); got "
              "scores.shape=", scores.sym_sizes());
  c10::SymInt numel = 1;
  for (const c10::SymInt& size : scores.sym_sizes().slice(1)) numel = numel * size;
  check_masked_numel(numel, "scores", scores.sym_sizes());
  TORCH_CHECK(kept >= 0, "kept must be in [0, numel per application]; got kept=", kept);
  if (const std::optional<int64_t> concrete = numel.maybe_as_int()) {
    TORCH_CHECK(kept <= *concrete, "kept must be in [0, numel per application] = [0, ", *concrete,
                "] for scores.shape=", scores.sym_sizes(), "; got kept=", kept);
  }
}

void check_learned_masked_weights(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& thresholds,
                                  std::optional<at::ScalarType> dtype) {
  check_weight(weight);
  check_scores_and_thresholds(weight, scores, thresholds);
  check_dtype(dtype);
}

void check_learned_masked_weights_backward(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& scores,
                                           const at::Tensor& thresholds, std::array<bool, 2> /*output_mask*/) {
  check_weight(weight);
  check_scores_and_thresholds(weight, scores, thresholds);
  check_grad(grad, weight, scores.sym_size(0));
}

void check_packed_masked_weights(const at::Tensor& weight, const at::Tensor& bits,
                                 std::optional<at::ScalarType> dtype) {
  check_weight(weight);
  check_bits(weight, bits);
  check_dtype(dtype);
}

void check_packed_masked_weights_backward(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& bits) {
  check_weight(weight);
  check_bits(weight, bits);
  check_grad(grad, weight, bits.sym_size(0));
}

at::Tensor learned_mask_thresholds(const at::Tensor& scores, int64_t kept) {
  check_learned_mask_thresholds(scores, kept);
  const int64_t num_layers = scores.size(0);
  const int64_t numel = scores.numel() / num_layers;
  const at::TensorOptions options = scores.options().dtype(at::kLong);
  if (kept == 0) return at::full({num_layers}, std::numeric_limits<int64_t>::max(), options);
  // The keys of learned_order_key, as whole-tensor ops: ordered(s) * 2^32 + (2^32 - 1 - i).
  const at::Tensor bits = scores.contiguous().view(at::kInt).reshape({num_layers, numel}).to(at::kLong);
  const at::Tensor ordered = bits.bitwise_xor(bits.bitwise_right_shift(31).bitwise_and(0x7FFFFFFF));
  const at::Tensor index_part = at::arange(0xFFFFFFFFLL, 0xFFFFFFFFLL - numel, -1, options);
  const at::Tensor keys = ordered.bitwise_left_shift(32).bitwise_or_(index_part);
  // Keys are distinct (they hold the index), so the kept-th largest is one well-defined value.
  return std::get<0>(keys.kthvalue(numel - kept + 1, /*dim=*/1));
}

at::Tensor learned_masked_weights_op(const LearnedMaskKernels& kernels, const at::Tensor& weight,
                                     const at::Tensor& scores, const at::Tensor& thresholds,
                                     std::optional<at::ScalarType> dtype) {
  check_learned_masked_weights(weight, scores, thresholds, dtype);
  const int64_t num_layers = scores.size(0);
  const at::Tensor out = empty_tied_masked_weights(weight, num_layers, dtype);
  if (weight.numel() == 0) return out;
  LearnedMaskParams params = make_params(weight, num_layers, channels_last_only(weight));
  const at::Tensor weight_read = weight_for_views(weight, params);
  kernels.learned_forward(params, weight_read, scores.contiguous(), thresholds.contiguous(), out);
  return out;
}

LearnedGradients learned_masked_weights_backward_op(const LearnedMaskKernels& kernels, const at::Tensor& grad,
                                                    const at::Tensor& weight, const at::Tensor& scores,
                                                    const at::Tensor& thresholds, std::array<bool, 2> output_mask) {
  check_learned_masked_weights_backward(grad, weight, scores, thresholds, output_mask);
  LearnedGradients gradients;
  if (!output_mask[0] && !output_mask[1]) return gradients;
  const auto contiguous = at::MemoryFormat::Contiguous;
  at::Tensor grad_weight, grad_scores;
  if (output_mask[0]) grad_weight = at::empty(weight.sizes(), weight.options().memory_format(contiguous));
  if (output_mask[1]) grad_scores = at::empty(scores.sizes(), scores.options().memory_format(contiguous));
  if (weight.numel() > 0) {
    const BackwardInputs inputs = backward_inputs(grad, weight, scores.size(0), /*reads_weight=*/output_mask[1]);
    kernels.learned_backward(inputs.params, inputs.grad, inputs.weight, scores.contiguous(), thresholds.contiguous(),
                             grad_weight, grad_scores);
  }
  if (output_mask[0]) std::get<0>(gradients) = std::move(grad_weight);
  if (output_mask[1]) std::get<1>(gradients) = std::move(grad_scores);
  return gradients;
}

at::Tensor packed_masked_weights_op(const LearnedMaskKernels& kernels, const at::Tensor& weight, const at::Tensor& bits,
                                    std::optional<at::ScalarType> dtype) {
  check_packed_masked_weights(weight, bits, dtype);
  const int64_t num_layers = bits.size(0);
  const at::Tensor out = empty_tied_masked_weights(weight, num_layers, dtype);
  if (weight.numel() == 0) return out;
  LearnedMaskParams params = make_params(weight, num_layers, channels_last_only(weight));
  const at::Tensor weight_read = weight_for_views(weight, params);
  kernels.packed_forward(params, weight_read, bits.contiguous(), out);
  return out;
}

at::Tensor packed_masked_weights_backward_op(const LearnedMaskKernels& kernels, const at::Tensor& grad,
                                             const at::Tensor& weight, const at::Tensor& bits) {
  check_packed_masked_weights_backward(grad, weight, bits);
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  if (weight.numel() == 0) return grad_weight;
  const BackwardInputs inputs = backward_inputs(grad, weight, bits.size(0), /*reads_weight=*/false);
  kernels.packed_backward(inputs.params, inputs.grad, bits.contiguous(), grad_weight);
  return grad_weight;
}

TORCH_LIBRARY_FRAGMENT(wtext, m) {
  m.def("learned_mask_thresholds(Tensor scores, int kept) -> Tensor");
  m.def("learned_masked_weights(Tensor weight, Tensor scores, Tensor thresholds, ScalarType? dtype=None) -> Tensor");
  m.def(
      "learned_masked_weights_backward(Tensor grad, Tensor weight, Tensor scores, Tensor thresholds, "
      "bool[] output_mask) -> (Tensor?, Tensor?)");
  m.def("packed_masked_weights(Tensor weight, Tensor bits, ScalarType? dtype=None) -> Tensor");
  m.def("packed_masked_weights_backward(Tensor grad, Tensor weight, Tensor bits) -> Tensor");
}

// The thresholds op only calls ATen ops, so one registration serves every backend; the CPU has a faster kernel of its
// own (learned_masks_cpu.cpp), and the fake kernel (wtext/ops/fake.py) is registered for Meta, both of which take
// precedence. Its output is an integer tensor: no gradient.
TORCH_LIBRARY_IMPL(wtext, CompositeExplicitAutograd, m) { m.impl("learned_mask_thresholds", &learned_mask_thresholds); }

}  // namespace wtext
