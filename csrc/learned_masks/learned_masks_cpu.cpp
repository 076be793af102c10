// CPU element loops of the learned and packed mask ops, parallel over blocks of weight elements (a block is handled
// for every application in turn, so its weights or gradient sums stay in L1 across them), and the thresholds.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "learned_masks/learned_masks.h"
#include "mask/cpu_loops.h"

namespace wtext {

namespace {

// Elements per block: the block's keep flags, weights and sums fit in L1/L2, and blocks are large enough to amortize
// the parallel scheduling. A multiple of 8, so that every block starts on a byte of the packed masks.
constexpr int64_t kBlock = 4096;
static_assert(kBlock % 8 == 0, "blocks must start on a byte of the packed masks");

// keep_flags[k] = 1 when element begin + k of application `layer` is kept by the learned masks. key(s, i) >= t is
// compared on 32-bit halves, where the loop vectorizes twice as wide as on int64 keys: with t = high * 2^32 + low,
// key >= t exactly when ordered(s) > high, or ordered(s) == high and 2^32 - 1 - i >= low, i.e.
// i <= 2^32 - 1 - low. That index bound is taken relative to the block and clamped into it, so it fits 32 bits too.
void keep_block(const LearnedMaskParams& params, const LearnedMaskSource& source, int64_t layer, int64_t begin,
                int64_t end, uint8_t* keep_flags) {
  const int64_t threshold = source.thresholds[layer];
  const auto high = static_cast<int32_t>(threshold >> 32);
  const int64_t last = 0xFFFFFFFFLL - (threshold & 0xFFFFFFFFLL) - begin;
  const auto last_in_block = static_cast<int32_t>(std::clamp<int64_t>(last, -1, kBlock));
  const float* scores = source.scores + layer * params.numel + begin;
  const auto count = static_cast<int32_t>(end - begin);
  for (int32_t k = 0; k < count; ++k) {
    const int32_t ordered = ordered_score(scores[k]);
    // Bitwise, not short-circuit, operators: learned masks look random to a branch predictor.
    keep_flags[k] = (ordered > high) | ((ordered == high) & (k <= last_in_block));
  }
}

// The eight flags of one byte of a packed mask, flag j = bit j, as the bytes of a little-endian uint64: the
// multiplication copies the byte into all eight lanes, the mask keeps bit j in lane j, and adding 0x7F carries a
// lane's set bit into its top bit (never into the next lane: 0x80 + 0x7F = 0xFF). Four operations per 8 elements.
inline uint64_t byte_flags(uint8_t byte) {
  const uint64_t lanes = (byte * 0x0101010101010101ULL) & 0x8040201008040201ULL;
  return ((lanes + 0x7F7F7F7F7F7F7F7FULL) & 0x8080808080808080ULL) >> 7;
}

// keep_flags[k] = bit begin + k of the packed mask of application `layer`, a whole byte at a time (begin is a
// multiple of 8).
void keep_block(const LearnedMaskParams& params, const PackedMaskSource& source, int64_t layer, int64_t begin,
                int64_t end, uint8_t* keep_flags) {
  const uint8_t* bytes = source.bits + layer * params.packed_bytes + begin / 8;
  const int64_t count = end - begin;
  int64_t k = 0;
  if constexpr (std::endian::native == std::endian::little) {
    for (; k + 8 <= count; k += 8) {
      const uint64_t flags = byte_flags(bytes[k >> 3]);
      std::memcpy(keep_flags + k, &flags, sizeof(flags));
    }
  }
  for (; k < count; ++k) keep_flags[k] = (bytes[k >> 3] >> (k & 7)) & 1;
}

template <typename Source, bool kRowMajor, typename in_t, typename out_t>
void forward_loop(const LearnedMaskParams& params, const Source& source, const in_t* weight, out_t* out) {
  for_each_block(params.numel, kBlock, [&](int64_t begin, int64_t end) {
    uint8_t keep_flags[kBlock];
    out_t values[kBlock];  // the block's weights in out's dtype, converted once for every application
    int64_t offsets[kRowMajor ? 1 : kBlock];
    if constexpr (!kRowMajor) stored_offsets(params, begin, end, offsets);
    const int64_t count = end - begin;
    for (int64_t k = 0; k < count; ++k) {
      const bool stored = !kRowMajor && params.weight_stored_alike;
      values[k] = static_cast<out_t>(weight[stored ? offsets[k] : begin + k]);
    }
    for (int64_t layer = 0; layer < params.num_layers; ++layer) {
      keep_block(params, source, layer, begin, end, keep_flags);
      out_t* out_layer = out + layer * params.numel;
      for (int64_t k = 0; k < count; ++k) {
        out_layer[kRowMajor ? begin + k : offsets[k]] = select_or_zero(keep_flags[k], values[k]);
      }
    }
  });
}

// Either output may be absent (nullptr): grad_weight sums the kept gradients, grad_scores takes every gradient times
// the weight (weight is read only for it).
template <typename Source, bool kRowMajor, typename grad_t, typename weight_t>
void backward_loop(const LearnedMaskParams& params, const Source& source, const grad_t* grad, const weight_t* weight,
                   weight_t* grad_weight, float* grad_scores) {
  using acc_t = learned_acc_t<grad_t, weight_t>;
  for_each_block(params.numel, kBlock, [&](int64_t begin, int64_t end) {
    uint8_t keep_flags[kBlock];
    acc_t grads[kBlock];  // the block of one application's gradient, read once for both outputs
    acc_t sums[kBlock];
    acc_t weights[kBlock];
    int64_t offsets[kRowMajor ? 1 : kBlock];
    if constexpr (!kRowMajor) stored_offsets(params, begin, end, offsets);
    const int64_t count = end - begin;
    if (grad_scores != nullptr) {
      for (int64_t k = 0; k < count; ++k) {
        const bool stored = !kRowMajor && params.weight_stored_alike;
        weights[k] = static_cast<acc_t>(weight[stored ? offsets[k] : begin + k]);
      }
    }
    std::fill(sums, sums + count, acc_t(0));
    for (int64_t layer = 0; layer < params.num_layers; ++layer) {
      const grad_t* grad_layer = grad + layer * params.numel;
      for (int64_t k = 0; k < count; ++k) grads[k] = static_cast<acc_t>(grad_layer[kRowMajor ? begin + k : offsets[k]]);
      if (grad_weight != nullptr) {
        keep_block(params, source, layer, begin, end, keep_flags);
        for (int64_t k = 0; k < count; ++k) sums[k] += select_or_zero(keep_flags[k], grads[k]);
      }
      if (grad_scores != nullptr) {
        float* scores_layer = grad_scores + layer * params.numel + begin;
        for (int64_t k = 0; k < count; ++k) scores_layer[k] = static_cast<float>(grads[k] * weights[k]);
      }
    }
    if (grad_weight != nullptr) {
      for (int64_t k = 0; k < count; ++k) grad_weight[begin + k] = static_cast<weight_t>(sums[k]);
    }
  });
}

template <typename Source>
void forward_cpu(const LearnedMaskParams& params, const Source& source, const at::Tensor& weight,
                 const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "learned_masks_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "learned_masks_cpu_out", [&] {
      using out_t = scalar_t;
      dispatch_layout(params, [&](auto row_major) {
        forward_loop<Source, decltype(row_major)::value, in_t, out_t>(params, source, weight.const_data_ptr<in_t>(),
                                                                      out.mutable_data_ptr<out_t>());
      });
    });
  });
}

// weight: read for grad_scores only (undefined for the packed masks, which have no scores); the weight's dtype is
// grad_weight's, or weight's when grad_weight is not asked for.
template <typename Source>
void backward_cpu(const LearnedMaskParams& params, const Source& source, const at::Tensor& grad,
                  const at::Tensor& weight, const at::Tensor& grad_weight, const at::Tensor& grad_scores) {
  const at::ScalarType weight_type = grad_weight.defined() ? grad_weight.scalar_type() : weight.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "learned_masks_backward_cpu", [&] {
    using grad_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight_type, "learned_masks_backward_cpu_w", [&] {
      using weight_t = scalar_t;
      dispatch_layout(params, [&](auto row_major) {
        backward_loop<Source, decltype(row_major)::value, grad_t, weight_t>(
            params, source, grad.const_data_ptr<grad_t>(),
            grad_scores.defined() ? weight.const_data_ptr<weight_t>() : nullptr,
            grad_weight.defined() ? grad_weight.mutable_data_ptr<weight_t>() : nullptr,
            grad_scores.defined() ? grad_scores.mutable_data_ptr<float>() : nullptr);
      });
    });
  });
}

void learned_forward_cpu(const LearnedMaskParams& params, const at::Tensor& weight, const at::Tensor& scores,
                         const at::Tensor& thresholds, const at::Tensor& out) {
  forward_cpu(params, LearnedMaskSource{scores.const_data_ptr<float>(), thresholds.const_data_ptr<int64_t>()}, weight,
              out);
}

void packed_forward_cpu(const LearnedMaskParams& params, const at::Tensor& weight, const at::Tensor& bits,
                        const at::Tensor& out) {
  forward_cpu(params, PackedMaskSource{bits.const_data_ptr<uint8_t>()}, weight, out);
}

void learned_backward_cpu(const LearnedMaskParams& params, const at::Tensor& grad, const at::Tensor& weight,
                          const at::Tensor& scores, const at::Tensor& thresholds, const at::Tensor& grad_weight,
                          const at::Tensor& grad_scores) {
  backward_cpu(params, LearnedMaskSource{scores.const_data_ptr<float>(), thresholds.const_data_ptr<int64_t>()}, grad,
               weight, grad_weight, grad_scores);
}

void packed_backward_cpu(const LearnedMaskParams& params, const at::Tensor& grad, const at::Tensor& bits,
                         const at::Tensor& grad_weight) {
  backward_cpu(params, PackedMaskSource{bits.const_data_ptr<uint8_t>()}, grad, at::Tensor(), grad_weight,
               at::Tensor());
}

// The thresholds on a CPU: each application's keys built in a buffer and the kept-th largest selected in place
// (std::nth_element), applications in parallel. The ATen ops the other devices use (learned_mask_thresholds: key
// tensors, then kthvalue, which also tracks the indices of the values it moves) took 1.7x as long on the dev CPU
// (0.92 vs 0.55 ms for 3 applications of 18432 elements, one thread). Keys are distinct, so both give one value.
at::Tensor learned_mask_thresholds_cpu(const at::Tensor& scores, int64_t kept) {
  check_learned_mask_thresholds(scores, kept);
  const int64_t num_layers = scores.size(0);
  const int64_t numel = scores.numel() / num_layers;
  at::Tensor thresholds = at::empty({num_layers}, scores.options().dtype(at::kLong));
  if (kept == 0) return thresholds.fill_(std::numeric_limits<int64_t>::max());
  const at::Tensor scores_read = scores.contiguous();
  const float* scores_ptr = scores_read.const_data_ptr<float>();
  int64_t* out = thresholds.mutable_data_ptr<int64_t>();
  at::parallel_for(0, num_layers, 1, [&](int64_t first, int64_t last) {
    std::vector<int64_t> keys(static_cast<size_t>(numel));
    for (int64_t layer = first; layer < last; ++layer) {
      const float* layer_scores = scores_ptr + layer * numel;
      for (int64_t i = 0; i < numel; ++i) keys[i] = learned_order_key(layer_scores[i], i);
      const auto kth = keys.begin() + (kept - 1);
      std::nth_element(keys.begin(), kth, keys.end(), std::greater<int64_t>());
      out[layer] = *kth;
    }
  });
  return thresholds;
}

constexpr LearnedMaskKernels kCpuKernels{&learned_forward_cpu, &packed_forward_cpu, &learned_backward_cpu,
                                         &packed_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CPU, m) {
  register_learned_mask_ops<kCpuKernels>(m);
  m.impl("learned_mask_thresholds", &learned_mask_thresholds_cpu);
}

}  // namespace wtext
