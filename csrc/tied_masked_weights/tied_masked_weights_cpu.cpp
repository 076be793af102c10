// CPU element loops of the mask ops, parallel over weight elements.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

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

// `keep ? value : 0` without a branch: masks are random, so a branch would mispredict on half the elements (this
// alone made the loops 5x slower). Clearing the bits keeps the semantics of a select (a dropped inf or NaN becomes
// +0, not NaN as multiplying by the mask would give) and lets the compiler vectorize.
template <typename T>
inline T select_or_zero(uint8_t keep, T value) {
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>;
  static_assert(sizeof(Bits) == sizeof(T), "unsupported element size");
  Bits bits;
  std::memcpy(&bits, &value, sizeof(T));
  bits &= static_cast<Bits>(-static_cast<Bits>(keep));
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// Runs body(begin, end) over the weight in blocks, in parallel.
template <typename Body>
void for_each_block(int64_t numel, int64_t block, const Body& body) {
  const int64_t num_blocks = (numel + block - 1) / block;
  at::parallel_for(0, num_blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) body(b * block, std::min(numel, (b + 1) * block));
  });
}

// Stored offsets (see stored_offset) of the logical elements [begin, end), walked with counters: a division per
// element, as stored_offset does, would cost more than the masking itself on a CPU.
void stored_offsets(const TiedMaskParams& params, int64_t begin, int64_t end, int64_t* offsets) {
  const int64_t in = params.channels_last_in, spatial = params.channels_last_spatial;
  int64_t row_start = begin - begin % params.reduction;
  int64_t c = (begin - row_start) / spatial, k = (begin - row_start) % spatial;
  for (int64_t i = begin; i < end; ++i) {
    offsets[i - begin] = row_start + k * in + c;
    if (++k == spatial) {
      k = 0;
      if (++c == in) {
        c = 0;
        row_start += params.reduction;
      }
    }
  }
}

// Turns "the stored tensor is row-major" into a template argument, so the row-major loops carry no index map and
// stay vectorizable; fn receives std::bool_constant<row_major>.
template <typename Fn>
void dispatch_layout(const TiedMaskParams& params, Fn&& fn) {
  if (params.channels_last_in == 0) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
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
