// The mask function, shared by the CPU and CUDA kernels so the two cannot drift apart.
//
// A mask element is a pure function of (seed, layer, flat element index, pattern, pattern parameters).
// The full specification, with its version number, is docs/masks.md; python_tests/pure_python_mask.py is a
// pure-Python implementation of it that the tests compare against. Changing anything in this file changes
// which weights every existing checkpoint keeps: bump kMaskSpecVersion and say so in docs/masks.md.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define WTEXT_HD __host__ __device__ __forceinline__
#else
#define WTEXT_HD inline
#endif

namespace wtext {

// 2: adds the overlap of a tied weight's masks, built on this function from Python (wtext/nn/mask_overlap.py);
// version-1 masks are unchanged.
constexpr int kMaskSpecVersion = 2;

// Golden-ratio increment of SplitMix64.
constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;

// SplitMix64's output function: a bijective 64-bit mixer with full avalanche.
WTEXT_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// One key per (seed, layer): the state of a SplitMix64 stream from which element hashes are drawn.
WTEXT_HD uint64_t layer_key(uint64_t seed, uint64_t layer) {
  return mix64(seed + kGamma * (layer + 1));
}

// The i-th output of the SplitMix64 stream started at `key`: one independent 64-bit draw per element.
WTEXT_HD uint64_t element_hash(uint64_t key, uint64_t index) {
  return mix64(key + kGamma * (index + 1));
}

// Bernoulli: keep when the top 32 bits of the hash fall below threshold = floor(density * 2^32).
// An integer comparison, so no floating-point rounding can make CPU and GPU disagree.
WTEXT_HD bool keep_bernoulli(uint64_t key, uint64_t index, uint64_t threshold) {
  return (element_hash(key, index) >> 32) < threshold;
}

// Exact count: every element gets a distinct 63-bit rank key (31 hash bits above the 32-bit index, so ties are
// impossible); the k elements with the smallest keys are kept. `threshold` is one past the k-th smallest key,
// found once on the host (see exact_count_threshold in mask_plan.cpp).
WTEXT_HD uint64_t exact_rank_key(uint64_t key, uint64_t index) {
  return ((element_hash(key, index) >> 33) << 32) | (index & 0xFFFFFFFFULL);
}

WTEXT_HD bool keep_exact(uint64_t key, uint64_t index, uint64_t threshold) {
  return exact_rank_key(key, index) < threshold;
}

// N:M: the reduction dimension (numel / shape[0], contiguous in a row-major weight) is cut into groups of M
// consecutive elements; in each group the N elements with the smallest (hash, index) are kept.
WTEXT_HD bool keep_n_of_m(uint64_t key, uint64_t index, int64_t reduction, int n, int m) {
  const uint64_t column = index % static_cast<uint64_t>(reduction);
  const uint64_t group_start = index - column % static_cast<uint64_t>(m);
  const uint64_t mine = element_hash(key, index);
  int smaller = 0;
  for (int j = 0; j < m; ++j) {
    const uint64_t other_index = group_start + j;
    const uint64_t other = element_hash(key, other_index);
    smaller += (other < mine) | ((other == mine) & (other_index < index));  // branch-free
  }
  return smaller < n;
}

enum class MaskPattern : int { kNone = 0, kBernoulli = 1, kExact = 2, kNM = 3 };

// Everything a kernel needs to evaluate one layer's mask at any element.
struct LayerMask {
  uint64_t key = 0;        // layer_key(seed, layer)
  uint64_t threshold = 0;  // bernoulli / exact threshold; unused for N:M
};

template <MaskPattern P>
WTEXT_HD bool keep(const LayerMask& layer, uint64_t index, int64_t reduction, int n, int m) {
  if constexpr (P == MaskPattern::kNone) {
    return true;
  } else if constexpr (P == MaskPattern::kBernoulli) {
    return keep_bernoulli(layer.key, index, layer.threshold);
  } else if constexpr (P == MaskPattern::kExact) {
    return keep_exact(layer.key, index, layer.threshold);
  } else {
    return keep_n_of_m(layer.key, index, reduction, n, m);
  }
}

}  // namespace wtext
