// Pieces of the CPU element loops that every mask op shares (the seed-derived masks of csrc/tied_masked_weights and
// the learned and packed masks of csrc/learned_masks): branch-free selection, blocks in parallel, and the stored
// offsets of a channels_last tensor.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace wtext {

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

// Runs body(begin, end) over numel elements in blocks of `block`, in parallel.
template <typename Body>
void for_each_block(int64_t numel, int64_t block, const Body& body) {
  const int64_t num_blocks = (numel + block - 1) / block;
  at::parallel_for(0, num_blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) body(b * block, std::min(numel, (b + 1) * block));
  });
}

// Stored offsets (see stored_offset in mask/mask_plan.h) of the logical elements [begin, end), walked with counters:
// a division per element, as stored_offset does, would cost more than the masking itself on a CPU. Params has the
// layout fields of TiedMaskParams (reduction, channels_last_in, channels_last_spatial).
template <typename Params>
void stored_offsets(const Params& params, int64_t begin, int64_t end, int64_t* offsets) {
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

// Turns "the stored tensor is row-major" (channels_last_in == 0) into a template argument, so the row-major loops
// carry no index map and stay vectorizable; fn receives std::bool_constant<row_major>.
template <typename Params, typename Fn>
void dispatch_layout(const Params& params, Fn&& fn) {
  if (params.channels_last_in == 0) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

}  // namespace wtext
