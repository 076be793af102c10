// Learned and bit-packed masks on one shared weight for L tied applications: the order keys both backends compare,
// the device-independent bodies of the ops (argument checks, output allocation and layout) and the registration of
// each backend's element loops (LearnedMaskKernels).
//
// The specification is plain PyTorch: wtext/nn/learned_reference.py (scores, order keys, thresholds,
// straight-through gradients) and wtext/nn/packed_masks.py (one bit per element, least significant first).
// Application l of a learned weight keeps element i when key(scores[l, i], i) >= thresholds[l]; of a packed one,
// when bit i of row l of the packed masks is set. Like the seed-derived masks, every mask is a function of the logical
// row-major index i; only the addresses of channels_last views change (stored_offset in mask/mask_plan.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>

#include "mask/mask_hash.h"
#include "masked_layer/output_mask.h"

namespace wtext {

// One call of a learned or packed kernel: the sizes, and the layout of the tensor of views it writes (forward) or of
// the stacked gradient it reads (backward), with the fields and meaning of TiedMaskParams' layout.
struct LearnedMaskParams {
  int64_t numel = 0;         // elements of the weight, i.e. of one application's view
  int64_t num_layers = 0;    // applications L, all in one launch (the masks come from tensors, nothing per layer here)
  int64_t packed_bytes = 0;  // bytes per packed mask, ceil(numel / 8)
  int64_t reduction = 1;     // numel / shape[0], for the channels_last index map
  int64_t channels_last_in = 0;
  int64_t channels_last_spatial = 1;
  bool weight_stored_alike = false;
};

// The float32 bits of a score as an int32 that orders like the float (-2.0 < -1.0 < -0.0 < +0.0 < 1.0): negative
// values have their 31 low bits flipped. (C++20: >> of a negative int is arithmetic.)
WTEXT_HD int32_t ordered_score(float score) {
#if defined(__CUDA_ARCH__)
  const int32_t bits = __float_as_int(score);
#else
  int32_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
#endif
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

// key(s, i) = ordered(s) * 2^32 + (2^32 - 1 - i): larger scores first, and among equal scores smaller indices
// first. The product is formed on unsigned bits, where shifting a negative value is well defined.
WTEXT_HD int64_t learned_order_key(float score, int64_t index) {
  const uint64_t high = static_cast<uint64_t>(static_cast<int64_t>(ordered_score(score))) << 32;
  return static_cast<int64_t>(high | (0xFFFFFFFFULL - static_cast<uint64_t>(index)));
}

// The masks of the learned op, read on the fly: element i of application l is kept when its key reaches the
// application's threshold. Both pointers are row-major: scores [L, numel], thresholds [L].
struct LearnedMaskSource {
  const float* scores;
  const int64_t* thresholds;

  WTEXT_HD bool keep(const LearnedMaskParams& params, int64_t layer, int64_t i) const {
    return learned_order_key(scores[layer * params.numel + i], i) >= thresholds[layer];
  }
};

// The masks of the packed op: bit i % 8 of byte i / 8 of row l of bits [L, ceil(numel / 8)].
struct PackedMaskSource {
  const uint8_t* bits;

  WTEXT_HD bool keep(const LearnedMaskParams& params, int64_t layer, int64_t i) const {
    return (bits[layer * params.packed_bytes + (i >> 3)] >> (i & 7)) & 1;
  }
};

// What the backward kernels sum and multiply in: double when grad or weight is float64, else float. (The op-math type
// of grad alone would sum a bfloat16 gradient of a float64 weight in float.)
template <typename grad_t, typename weight_t>
using learned_acc_t = std::conditional_t<std::is_same_v<at::opmath_type<grad_t>, double> ||
                                             std::is_same_v<at::opmath_type<weight_t>, double>,
                                         double, float>;

struct LearnedMaskKernels {
  // out[l, i] = keep_l(i) ? weight[i] : 0 for every application l, in out's dtype (dropped entries +0).
  void (*learned_forward)(const LearnedMaskParams& params, const at::Tensor& weight, const at::Tensor& scores,
                          const at::Tensor& thresholds, const at::Tensor& out);
  void (*packed_forward)(const LearnedMaskParams& params, const at::Tensor& weight, const at::Tensor& bits,
                         const at::Tensor& out);
  // In one pass over grad: grad_weight[i] = sum_l keep_l(i) ? grad[l, i] : 0 (summed in the op-math type) and, for
  // the learned masks, grad_scores[l, i] = grad[l, i] * weight[i] (straight-through: every entry). An undefined
  // output is not computed; weight is read only for grad_scores.
  void (*learned_backward)(const LearnedMaskParams& params, const at::Tensor& grad, const at::Tensor& weight,
                           const at::Tensor& scores, const at::Tensor& thresholds, const at::Tensor& grad_weight,
                           const at::Tensor& grad_scores);
  void (*packed_backward)(const LearnedMaskParams& params, const at::Tensor& grad, const at::Tensor& bits,
                          const at::Tensor& grad_weight);
};

// (grad_weight, grad_scores) of learned_masked_weights_backward; what output_mask does not ask for is None.
using LearnedGradients = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>>;

// The argument checks of the ops, each taking its op's arguments; errors name the argument and the bad value. They
// read shapes (as SymInts), dtypes and devices, never data, so the fake kernels (wtext/ops/fake.py) call them too.
void check_learned_mask_thresholds(const at::Tensor& scores, int64_t kept);
void check_learned_masked_weights(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& thresholds,
                                  std::optional<at::ScalarType> dtype);
void check_learned_masked_weights_backward(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& scores,
                                           const at::Tensor& thresholds, std::array<bool, 2> output_mask);
void check_packed_masked_weights(const at::Tensor& weight, const at::Tensor& bits,
                                 std::optional<at::ScalarType> dtype);
void check_packed_masked_weights_backward(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& bits);

// The thresholds, int64 [L]: the kept-th largest key of each application's scores (2^63 - 1 when kept = 0). Built
// from ATen ops (keys, then kthvalue), so it runs on any device without a host sync; the CPU registers a selection
// of its own.
at::Tensor learned_mask_thresholds(const at::Tensor& scores, int64_t kept);

at::Tensor learned_masked_weights_op(const LearnedMaskKernels& kernels, const at::Tensor& weight,
                                     const at::Tensor& scores, const at::Tensor& thresholds,
                                     std::optional<at::ScalarType> dtype);
LearnedGradients learned_masked_weights_backward_op(const LearnedMaskKernels& kernels, const at::Tensor& grad,
                                                    const at::Tensor& weight, const at::Tensor& scores,
                                                    const at::Tensor& thresholds, std::array<bool, 2> output_mask);
at::Tensor packed_masked_weights_op(const LearnedMaskKernels& kernels, const at::Tensor& weight, const at::Tensor& bits,
                                    std::optional<at::ScalarType> dtype);
at::Tensor packed_masked_weights_backward_op(const LearnedMaskKernels& kernels, const at::Tensor& grad,
                                             const at::Tensor& weight, const at::Tensor& bits);

// Registers the four kernel-backed ops for one backend's dispatch key (m), bound to its element loops.
template <const LearnedMaskKernels& kernels>
void register_learned_mask_ops(torch::Library& m) {
  m.impl("learned_masked_weights", [](const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& thresholds,
                                      std::optional<at::ScalarType> dtype) {
    return learned_masked_weights_op(kernels, weight, scores, thresholds, dtype);
  });
  m.impl("learned_masked_weights_backward",
         [](const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& thresholds,
            const c10::List<bool>& output_mask) {
           return learned_masked_weights_backward_op(
               kernels, grad, weight, scores, thresholds,
               output_mask_pair("learned_masked_weights_backward", output_mask));
         });
  m.impl("packed_masked_weights",
         [](const at::Tensor& weight, const at::Tensor& bits, std::optional<at::ScalarType> dtype) {
           return packed_masked_weights_op(kernels, weight, bits, dtype);
         });
  m.impl("packed_masked_weights_backward",
         [](const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& bits) {
           return packed_masked_weights_backward_op(kernels, grad, weight, bits);
         });
}

}  // namespace wtext
