// CPU element loops of the mask ops, parallel over weight elements.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "mask/cpu_loops.h"
#include "tied_masked_weights/tied_masked_weights.h"

namespace wtext {

namespace {

// Elements per block: a block's keep flags fit in L1 next to its weights, and blocks are large enough to amortize
// the parallel scheduling. N:M blocks are the largest multiple of M that fits, so that no group straddles two blocks.
constexpr int64_t kBlock = 4096;

int64_t block_size(MaskPattern pattern, const TiedMaskParams& params) {
  return pattern == MaskPattern::kNM ? (kBlock / params.nm_m) * params.nm_m : kBlock;
}

// N:M flags for the groups in [begin, end), group by group: M hashes per group rather than per element (as the
// one-thread-per-element CUDA kernel must). kM > 0 fixes M at compile time so the M*M rank comparisons unroll into
// straight-line code (3x faster for 2:4); kM = 0 reads M at run time.
template <int kM>
void nm_block(const TiedMaskParams& params, const LayerMask& layer, int64_t begin, int64_t end, uint8_t* keep_flags) {
  const int m = kM > 0 ? kM : params.nm_m;
  uint64_t hashes[64];
  for (int64_t group = begin; group < end; group += m) {
    for (int j = 0; j < m; ++j) hashes[j] = element_hash(layer.key, static_cast<uint64_t>(group + j));
    for (int j = 0; j < m; ++j) {
      int smaller = 0;
      // Bitwise, not short-circuit, operators: random comparisons must not become branches.
      for (int k = 0; k < m; ++k) smaller += (hashes[k] < hashes[j]) | ((hashes[k] == hashes[j]) & (k < j));
      keep_flags[group - begin + j] = smaller < params.nm_n;
    }
  }
}

// keep[k] = 1 when element begin + k survives the layer's mask.
template <MaskPattern P>
void mask_block(const TiedMaskParams& params, const LayerMask& layer, int64_t begin, int64_t end, uint8_t* keep_flags) {
  if constexpr (P == MaskPattern::kNM) {
    switch (params.nm_m) {
      case 4: nm_block<4>(params, layer, begin, end, keep_flags); break;
      case 8: nm_block<8>(params, layer, begin, end, keep_flags); break;
      default: nm_block<0>(params, layer, begin, end, keep_flags); break;
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      keep_flags[i - begin] = keep<P>(layer, static_cast<uint64_t>(i), params.reduction, params.nm_n, params.nm_m);
    }
  }
}

template <MaskPattern P, bool kRowMajor, typename in_t, typename out_t>
void forward_loop(const TiedMaskParams& params, const in_t* weight, out_t* out) {
  for_each_block(params.numel, block_size(P, params), [&](int64_t begin, int64_t end) {
    uint8_t keep_flags[kBlock];
    int64_t offsets[kRowMajor ? 1 : kBlock];
    if constexpr (!kRowMajor) stored_offsets(params, begin, end, offsets);
    for (int j = 0; j < params.num_layers; ++j) {
      mask_block<P>(params, params.layers[j], begin, end, keep_flags);
      out_t* out_layer = out + j * params.numel;
      if (weight == nullptr) {
        for (int64_t i = begin; i < end; ++i) {
          out_layer[kRowMajor ? i : offsets[i - begin]] = static_cast<out_t>(keep_flags[i - begin]);
        }
      } else {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t at = kRowMajor ? i : offsets[i - begin];
          const in_t value = weight[!kRowMajor && params.weight_stored_alike ? at : i];
          out_layer[at] = select_or_zero(keep_flags[i - begin], static_cast<out_t>(value));
        }
      }
    }
  });
}

template <MaskPattern P, bool kRowMajor, typename grad_t, typename weight_t>
void backward_loop(const TiedMaskParams& params, const grad_t* grad, weight_t* grad_weight, bool accumulate) {
  using acc_t = at::opmath_type<grad_t>;
  for_each_block(params.numel, block_size(P, params), [&](int64_t begin, int64_t end) {
    uint8_t keep_flags[kBlock];
    acc_t sums[kBlock];
    int64_t offsets[kRowMajor ? 1 : kBlock];
    if constexpr (!kRowMajor) stored_offsets(params, begin, end, offsets);
    for (int64_t i = begin; i < end; ++i) {
      sums[i - begin] = accumulate ? static_cast<acc_t>(grad_weight[i]) : acc_t(0);
    }
    for (int j = 0; j < params.num_layers; ++j) {
      mask_block<P>(params, params.layers[j], begin, end, keep_flags);
      const grad_t* grad_layer = grad + j * params.numel;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t at = kRowMajor ? i : offsets[i - begin];
        sums[i - begin] += select_or_zero(keep_flags[i - begin], static_cast<acc_t>(grad_layer[at]));
      }
    }
    for (int64_t i = begin; i < end; ++i) grad_weight[i] = static_cast<weight_t>(sums[i - begin]);
  });
}

void forward_cpu(const TiedMaskParams& params, MaskPattern pattern, const at::Tensor& weight, const at::Tensor& out) {
  const at::ScalarType in_type = weight.defined() ? weight.scalar_type() : out.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_type, "tied_masked_weights_cpu", [&] {
    using in_t = scalar_t;
    const in_t* weight_ptr = weight.defined() ? weight.const_data_ptr<in_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "tied_masked_weights_cpu_out", [&] {
      using out_t = scalar_t;
      dispatch_pattern(pattern, [&](auto p) {
        dispatch_layout(params, [&](auto row_major) {
          forward_loop<decltype(p)::value, decltype(row_major)::value, in_t, out_t>(params, weight_ptr,
                                                                                    out.mutable_data_ptr<out_t>());
        });
      });
    });
  });
}

void backward_cpu(const TiedMaskParams& params, MaskPattern pattern, const at::Tensor& grad,
                  const at::Tensor& grad_weight, bool accumulate) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "tied_masked_weights_backward_cpu", [&] {
    using grad_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_weight.scalar_type(), "tied_masked_weights_backward_cpu_w", [&] {
      using weight_t = scalar_t;
      dispatch_pattern(pattern, [&](auto p) {
        dispatch_layout(params, [&](auto row_major) {
          backward_loop<decltype(p)::value, decltype(row_major)::value, grad_t, weight_t>(
              params, grad.const_data_ptr<grad_t>(), grad_weight.mutable_data_ptr<weight_t>(), accumulate);
        });
      });
    });
  });
}

constexpr TiedMaskKernels kCpuKernels{&forward_cpu, &backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CPU, m) { register_tied_mask_ops<kCpuKernels>(m, c10::DeviceType::CPU); }

}  // namespace wtext
