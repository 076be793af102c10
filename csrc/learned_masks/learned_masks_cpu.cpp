// CPU element loops of the learned and packed mask ops, parallel over blocks of weight elements. A block is handled
// for every application in turn, so its weights (forward) or its gradient sums (backward) stay in L1 across them.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

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

// keep_flags[k] = bit begin + k of the packed mask of application `layer`, a whole byte at a time (begin is a
// multiple of 8), so the eight shifts unroll instead of every element computing its byte address.
void keep_block(const LearnedMaskParams& params, const PackedMaskSource& source, int64_t layer, int64_t begin,
                int64_t end, uint8_t* keep_flags) {
  const uint8_t* bytes = source.bits + layer * params.packed_bytes + begin / 8;
  const int64_t count = end - begin;
  const int64_t full_bytes = count / 8;
  for (int64_t b = 0; b < full_bytes; ++b) {
    const uint8_t byte = bytes[b];
    for (int bit = 0; bit < 8; ++bit) keep_flags[8 * b + bit] = (byte >> bit) & 1;
  }
  for (int64_t k = 8 * full_bytes; k < count; ++k) keep_flags[k] = (bytes[k >> 3] >> (k & 7)) & 1;
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

constexpr LearnedMaskKernels kCpuKernels{&learned_forward_cpu, &packed_forward_cpu, &learned_backward_cpu,
                                         &packed_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CPU, m) { register_learned_mask_ops<kCpuKernels>(m); }

}  // namespace wtext
