// Host side of the mask function: argument checks and the per-layer constants the kernels need.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <type_traits>
#include <vector>

#include "mask/mask_hash.h"

namespace wtext {

// The most layers one kernel launch handles; longer layer lists are processed in chunks. Kept small so the
// parameter struct stays well under CUDA's 4 KB kernel-argument limit.
constexpr int kMaxLayersPerLaunch = 64;

// What a tied-weights kernel needs: the mask of each requested layer, evaluated at any element index.
struct TiedMaskParams {
  int64_t numel = 0;
  int64_t reduction = 1;  // numel / shape[0]: the dimension N:M groups run along
  int nm_n = 2;
  int nm_m = 4;
  int num_layers = 0;
  // How the per-layer tensor a kernel writes (forward) or reads (backward) is laid out in memory. The mask is
  // always a function of the logical row-major index; only addresses change. 0 means row-major. Otherwise the
  // tensor is a channels_last [out, in, kh, kw] weight, stored [out, kh, kw, in], with in = channels_last_in and
  // kh*kw = channels_last_spatial: writing and reading it in place saves a layout copy (one kernel launch) per call.
  int64_t channels_last_in = 0;
  int64_t channels_last_spatial = 1;
  // With a channels_last layout: whether the weight the forward reads is stored that way too (a model moved to
  // channels_last), so it is read at the stored offset instead of at the logical index of a row-major copy.
  bool weight_stored_alike = false;
  LayerMask layers[kMaxLayersPerLaunch];
};

// Memory offset of logical element i (row-major [out, in, kh, kw] index) in the params' stored layout. The
// arithmetic is 32-bit (weights have fewer than 2^32 elements, see check_mask_plan): a 64-bit division costs
// several times more on a GPU. Params is TiedMaskParams or any struct with its layout fields (reduction,
// channels_last_in, channels_last_spatial), so the learned-mask kernels (csrc/learned_masks) share this arithmetic.
template <typename Params>
WTEXT_HD int64_t stored_offset(const Params& params, int64_t i) {
  if (params.channels_last_in == 0) return i;
  const auto in = static_cast<uint32_t>(params.channels_last_in);
  const auto spatial = static_cast<uint32_t>(params.channels_last_spatial);
  const uint32_t r = static_cast<uint32_t>(i) % static_cast<uint32_t>(params.reduction);  // c * spatial + k
  return (i - r) + static_cast<int64_t>((r % spatial) * in + r / spatial);
}

// The inverse: the logical index of the element stored at memory offset s.
template <typename Params>
WTEXT_HD int64_t logical_index(const Params& params, int64_t s) {
  if (params.channels_last_in == 0) return s;
  const auto in = static_cast<uint32_t>(params.channels_last_in);
  const auto spatial = static_cast<uint32_t>(params.channels_last_spatial);
  const uint32_t r = static_cast<uint32_t>(s) % static_cast<uint32_t>(params.reduction);  // k * in + c
  return (s - r) + static_cast<int64_t>((r % in) * spatial + r / in);
}

// A whole request: the pattern plus one TiedMaskParams per chunk of at most kMaxLayersPerLaunch layers.
struct TiedMaskPlan {
  MaskPattern pattern = MaskPattern::kNone;
  std::vector<TiedMaskParams> chunks;
};

// "bernoulli" | "exact" | "nm"; anything else is an error naming the value.
MaskPattern parse_pattern(c10::string_view pattern);

// The checks of a mask request, in every op that takes one: mode ("dense" | "same" | "multi"), pattern, the weight
// (floating dtype, rank >= 2, fewer than 2^32 elements), density, the N:M shape and its divisibility, the layers.
// Errors name the argument and the bad value. Only the weight's metadata is read, sizes as SymInts, so the fake
// kernels run these checks as they are, under torch.compile too.
void check_mask_plan(const at::Tensor& weight, at::IntArrayRef layers, double density, c10::string_view pattern,
                     int64_t nm_n, int64_t nm_m, c10::string_view mode);

// Builds the per-layer constants for `layers` under `mode`; the arguments must have passed check_mask_plan.
TiedMaskPlan plan_tied_masks(const at::Tensor& weight, at::IntArrayRef layers, int64_t seed, double density,
                             c10::string_view pattern, int64_t nm_n, int64_t nm_m, c10::string_view mode);

}  // namespace wtext

namespace wtext {

// Turns the runtime pattern into a template argument once, at the kernel entry, so inner loops carry no branch
// on it: fn receives std::integral_constant<MaskPattern, P>.
template <typename Fn>
void dispatch_pattern(MaskPattern pattern, Fn&& fn) {
  switch (pattern) {
    case MaskPattern::kNone: fn(std::integral_constant<MaskPattern, MaskPattern::kNone>{}); break;
    case MaskPattern::kBernoulli: fn(std::integral_constant<MaskPattern, MaskPattern::kBernoulli>{}); break;
    case MaskPattern::kExact: fn(std::integral_constant<MaskPattern, MaskPattern::kExact>{}); break;
    case MaskPattern::kNM: fn(std::integral_constant<MaskPattern, MaskPattern::kNM>{}); break;
  }
}

}  // namespace wtext
