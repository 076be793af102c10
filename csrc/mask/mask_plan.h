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
  LayerMask layers[kMaxLayersPerLaunch];
};

// A whole request: the pattern plus one TiedMaskParams per chunk of at most kMaxLayersPerLaunch layers.
struct TiedMaskPlan {
  MaskPattern pattern = MaskPattern::kNone;
  std::vector<TiedMaskParams> chunks;
};

// "bernoulli" | "exact" | "nm"; anything else is an error naming the value.
MaskPattern parse_pattern(const std::string& pattern);

// Checks density, N:M shape and the weight (floating dtype, rank >= 2, N:M divisibility); errors name the
// argument and the bad value.
void check_mask_arguments(const at::Tensor& weight, double density, MaskPattern pattern, int64_t nm_n, int64_t nm_m);

// Builds the per-layer constants for `layers` under `mode` ("dense" | "same" | "multi").
TiedMaskPlan plan_tied_masks(const at::Tensor& weight, at::IntArrayRef layers, int64_t seed, double density,
                             const std::string& pattern, int64_t nm_n, int64_t nm_m, const std::string& mode);

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
