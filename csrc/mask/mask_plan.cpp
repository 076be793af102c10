#include "mask/mask_plan.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

namespace wtext {

MaskPattern parse_pattern(c10::string_view pattern) {
  if (pattern == "bernoulli") return MaskPattern::kBernoulli;
  if (pattern == "exact") return MaskPattern::kExact;
  if (pattern == "nm") return MaskPattern::kNM;
  TORCH_CHECK(false, "pattern must be one of 'bernoulli', 'exact', 'nm'; got pattern='", pattern, "'");
}

void check_mask_plan(const at::Tensor& weight, at::IntArrayRef layers, double density, c10::string_view pattern,
                     int64_t nm_n, int64_t nm_m, c10::string_view mode) {
  TORCH_CHECK(mode == "dense" || mode == "same" || mode == "multi",
              "mode must be one of 'dense', 'same', 'multi'; got mode='", mode, "'");
  const MaskPattern parsed = parse_pattern(pattern);
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()),
              "weight must have a floating-point dtype (float64, float32, float16 or bfloat16); got weight.dtype=",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() >= 2, "weight must have rank >= 2 ([out, in, ...]); got weight.dim()=", weight.dim(),
              " with shape ", weight.sym_sizes());
  TORCH_CHECK(std::isfinite(density) && density > 0.0 && density <= 1.0, "density must be in (0, 1]; got density=",
              density);
  // A symbolic numel (under torch.compile) is left to the kernel: comparing it would add a guard to every compiled
  // call.
  if (const std::optional<int64_t> numel = weight.sym_numel().maybe_as_int()) {
    TORCH_CHECK(static_cast<uint64_t>(*numel) < (1ULL << 32),
                "weight must have fewer than 2^32 elements for masking; got weight.numel()=", *numel);
  }
  if (parsed == MaskPattern::kNM) {
    TORCH_CHECK(nm_m >= 1 && nm_m <= 64, "nm M must be in [1, 64]; got M=", nm_m);
    TORCH_CHECK(nm_n >= 1 && nm_n <= nm_m, "nm N must be in [1, M]; got N=", nm_n, " with M=", nm_m);
    const c10::SymInt rows = weight.sym_size(0);
    const c10::SymInt reduction = rows == 0 ? c10::SymInt(0) : weight.sym_numel() / rows;
    TORCH_CHECK(reduction % nm_m == 0, "nm M must divide the reduction dimension (numel / shape[0] = ", reduction,
                " for weight shape ", weight.sym_sizes(), "); got M=", nm_m);
  }
  TORCH_CHECK(!layers.empty(), "layers must name at least one layer; got an empty list");
  for (int64_t layer : layers) {
    TORCH_CHECK(layer >= 0, "layer must be >= 0; got layer=", layer);
  }
}

namespace {

// floor(density * 2^32): multiplying by a power of two is exact in double, so the Python reference and this
// code agree bit for bit.
uint64_t bernoulli_threshold(double density) {
  return static_cast<uint64_t>(std::floor(density * 4294967296.0));
}

// The number of elements an exact-count mask keeps: floor(density * numel + 0.5), computed in double.
uint64_t exact_keep_count(double density, int64_t numel) {
  return static_cast<uint64_t>(std::floor(density * static_cast<double>(numel) + 0.5));
}

// The top `bits` bits of a rank key (rank keys are < 2^63, see exact_rank_key).
uint64_t rank_bucket(uint64_t rank_key, int bits) { return rank_key >> (63 - bits); }

// The k-th smallest (k = keep >= 1) of the layer's numel rank keys, by a radix selection: one pass counts the keys
// per bucket of their top bits, a second collects the keys of the one bucket that holds the k-th smallest, and the
// selection runs over those alone. It holds a histogram and about numel / 2^16 keys, where a selection over all
// numel keys (8 bytes each) would need 32 GiB at the 2^32 elements masks support, and it gives the same key. Both
// passes run in parallel.
uint64_t kth_smallest_rank_key(uint64_t key, int64_t numel, uint64_t keep) {
  // Buckets of ~16 keys for small weights, 2^16 buckets (a 512 KiB histogram per thread) from 2^20 elements on.
  int bits = 1;
  while (bits < 16 && (int64_t{1} << (bits + 4)) < numel) ++bits;
  const int64_t buckets = int64_t{1} << bits;
  constexpr int64_t kGrain = int64_t{1} << 16;
  std::mutex merge_mutex;

  std::vector<uint64_t> counts(static_cast<size_t>(buckets), 0);
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> local(static_cast<size_t>(buckets), 0);
    for (int64_t i = begin; i < end; ++i) ++local[rank_bucket(exact_rank_key(key, static_cast<uint64_t>(i)), bits)];
    std::lock_guard<std::mutex> lock(merge_mutex);
    for (int64_t b = 0; b < buckets; ++b) counts[b] += local[b];
  });
  uint64_t below = 0;  // keys in the buckets before `target`
  int64_t target = 0;
  while (below + counts[target] < keep) below += counts[target++];

  std::vector<uint64_t> candidates;
  candidates.reserve(static_cast<size_t>(counts[target]));
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> local;
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t rank_key = exact_rank_key(key, static_cast<uint64_t>(i));
      if (rank_bucket(rank_key, bits) == static_cast<uint64_t>(target)) local.push_back(rank_key);
    }
    std::lock_guard<std::mutex> lock(merge_mutex);
    candidates.insert(candidates.end(), local.begin(), local.end());
  });
  // Keys are distinct, so the k-th smallest does not depend on the order the chunks were merged in.
  auto kth = candidates.begin() + static_cast<std::ptrdiff_t>(keep - 1 - below);
  std::nth_element(candidates.begin(), kth, candidates.end());
  return *kth;
}

// One past the k-th smallest rank key of a layer. A pure function of (key, numel, k), so it is computed once per
// process and cached (a few bytes per layer): the kernels afterwards evaluate exact-count masks as cheaply as
// Bernoulli ones, on any device, with no sync.
uint64_t exact_count_threshold(uint64_t key, int64_t numel, uint64_t keep) {
  static std::mutex cache_mutex;
  static std::map<std::tuple<uint64_t, int64_t, uint64_t>, uint64_t> cache;
  const auto cache_key = std::make_tuple(key, numel, keep);
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto found = cache.find(cache_key);
    if (found != cache.end()) return found->second;
  }
  // Rank keys are < 2^63, so one past the largest still fits.
  const uint64_t threshold = keep > 0 ? kth_smallest_rank_key(key, numel, keep) + 1 : 0;
  std::lock_guard<std::mutex> lock(cache_mutex);
  cache.emplace(cache_key, threshold);
  return threshold;
}

LayerMask make_layer_mask(uint64_t seed, int64_t layer, double density, MaskPattern pattern, int64_t numel) {
  LayerMask mask;
  mask.key = layer_key(seed, static_cast<uint64_t>(layer));
  if (pattern == MaskPattern::kBernoulli) {
    mask.threshold = bernoulli_threshold(density);
  } else if (pattern == MaskPattern::kExact) {
    mask.threshold = exact_count_threshold(mask.key, numel, exact_keep_count(density, numel));
  }
  return mask;
}

}  // namespace

TiedMaskPlan plan_tied_masks(const at::Tensor& weight, at::IntArrayRef layers, int64_t seed, double density,
                             c10::string_view pattern, int64_t nm_n, int64_t nm_m, c10::string_view mode) {
  const MaskPattern parsed = parse_pattern(pattern);
  TiedMaskPlan plan;
  plan.pattern = mode == "dense" ? MaskPattern::kNone : parsed;
  const int64_t numel = weight.numel();
  const uint64_t seed_bits = static_cast<uint64_t>(seed);
  // A same-mask model applies layer 0's mask at every application.
  LayerMask shared;
  if (mode == "same" && numel > 0) shared = make_layer_mask(seed_bits, 0, density, parsed, numel);

  for (size_t start = 0; start < layers.size(); start += kMaxLayersPerLaunch) {
    TiedMaskParams params;
    params.numel = numel;
    params.reduction = weight.size(0) == 0 ? 1 : std::max<int64_t>(1, numel / weight.size(0));
    params.nm_n = static_cast<int>(nm_n);
    params.nm_m = static_cast<int>(nm_m);
    params.num_layers = static_cast<int>(std::min<size_t>(kMaxLayersPerLaunch, layers.size() - start));
    for (int j = 0; j < params.num_layers; ++j) {
      if (mode == "multi" && numel > 0) {
        params.layers[j] = make_layer_mask(seed_bits, layers[start + j], density, parsed, numel);
      } else if (mode == "same") {
        params.layers[j] = shared;
      }
    }
    plan.chunks.push_back(params);
  }
  return plan;
}

}  // namespace wtext
