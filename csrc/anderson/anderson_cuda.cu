// CUDA kernels of anderson_step and anderson_tracked_step. Three launches on the current stream, no host
// synchronization, so a fixed-budget solve loop can be captured in a CUDA graph:
//   1. gram_update:  one block per (sample, window slot): the dot product of the newest residual g = f - x with
//                    that slot's stored residual (m reductions over d, not m^2); the block of the newest slot also
//                    writes g and f into the ring buffers (and, tracked, sums |f|^2 for the relative residual).
//   2. solve:        one thread per sample: (tracked) the convergence bookkeeping of anderson_track.h, then the
//                    regularized (m x m) solve of anderson_solve.h, in double.
//   3. mix:          one thread per element (or 16-byte pack): x_next = sum_i alpha_i f_i - (1 - beta) *
//                    sum_i alpha_i g_i; tracked, a stopped sample copies x instead, and a sample whose previous
//                    iterate stays its best (it did not improve on it) copies that iterate into best (the lazy
//                    copy of anderson_track.h).
// This block layout won on an H100: blocks over (chunk of d, sample) with all m dot products per block ran 1.7x
// (gram) and 2.2x (mix) slower despite reading fewer bytes. Both kernels move 16 bytes per access where alignment
// allows (Pack below): the streams were latency-bound, and a thread then keeps four times the bytes in flight.
// The timings behind both decisions are in benchmarks/NOTES.md.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "anderson/anderson.h"
#include "anderson/anderson_solve.h"

namespace wtext {

namespace {

constexpr int kReduceThreads = 256;
constexpr int kMixThreads = 256;

// Per-sample scratch of one step, in doubles: the mixing weights, then (tracked steps only) the squared norms of
// the newest residual and of f(x), and whether the previous iterate must be copied into best.
constexpr int kAlpha = 0;
constexpr int kResidualSq = kMaxAndersonWindow;
constexpr int kImageSq = kMaxAndersonWindow + 1;
constexpr int kCopyPrevious = kMaxAndersonWindow + 2;
constexpr int kScratch = kMaxAndersonWindow + 3;

// Sums `value` over the block (kReduceThreads threads); the total is valid in thread 0.
__device__ double block_sum(double value, double* warp_sums) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffff, value, offset);
  __syncthreads();  // warp_sums may still be read from a previous call
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kReduceThreads / 32; ++w) total += warp_sums[w];
  }
  return total;
}

// kVec consecutive elements moved as one 16-byte access (kVec = 1: one element). The kernels below are bound by
// bytes in flight: with one 4-byte load per thread and iteration, an H100 SM has too few outstanding bytes to
// cover memory latency (run 3: Gram at ~58% of the copy bandwidth), so each thread moves 16 bytes per access.
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

template <int kVec, typename scalar_t>
__device__ __forceinline__ Pack<scalar_t, kVec> load_pack(const scalar_t* from) {
  return *reinterpret_cast<const Pack<scalar_t, kVec>*>(from);
}

template <int kVec, typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* to, const Pack<scalar_t, kVec>& pack) {
  *reinterpret_cast<Pack<scalar_t, kVec>*>(to) = pack;
}

template <typename scalar_t, bool kTracked, int kVec>
__global__ void gram_update_kernel(const AndersonStepParams p, const scalar_t* __restrict__ x,
                                   const scalar_t* __restrict__ fx, scalar_t* __restrict__ g_history,
                                   scalar_t* __restrict__ f_history, scalar_t* __restrict__ gram,
                                   double* __restrict__ scratch) {
  const int64_t b = blockIdx.y;
  const int64_t i = blockIdx.x;  // window slot, < p.valid
  const scalar_t* xb = x + b * p.dim;
  const scalar_t* fb = fx + b * p.dim;
  scalar_t* gh = g_history + b * p.window * p.dim;
  scalar_t* fh = f_history + b * p.window * p.dim;
  const bool newest = i == p.slot;
  double partial = 0;
  double image_partial = 0;
  for (int64_t k = static_cast<int64_t>(threadIdx.x) * kVec; k < p.dim; k += static_cast<int64_t>(blockDim.x) * kVec) {
    const Pack<scalar_t, kVec> f = load_pack<kVec>(fb + k);
    const Pack<scalar_t, kVec> xk = load_pack<kVec>(xb + k);
    Pack<scalar_t, kVec> g;
    // rounded like the stored residual, so every Gram entry sees the same values
#pragma unroll
    for (int j = 0; j < kVec; ++j) g.v[j] = f.v[j] - xk.v[j];
    const Pack<scalar_t, kVec> other = newest ? g : load_pack<kVec>(gh + i * p.dim + k);
#pragma unroll
    for (int j = 0; j < kVec; ++j) partial += double(g.v[j]) * double(other.v[j]);
    if (newest) {  // only this block touches slot p.slot, and the others never read it
      store_pack<kVec>(gh + p.slot * p.dim + k, g);
      store_pack<kVec>(fh + p.slot * p.dim + k, f);
      if (kTracked) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) image_partial += double(f.v[j]) * double(f.v[j]);
      }
    }
  }
  __shared__ double warp_sums[kReduceThreads / 32];
  const double total = block_sum(partial, warp_sums);
  double image_total = 0;
  if (kTracked && newest) image_total = block_sum(image_partial, warp_sums);  // block-uniform condition
  if (threadIdx.x == 0) {
    scalar_t* gb = gram + b * p.window * p.window;
    gb[p.slot * p.window + i] = static_cast<scalar_t>(total);
    gb[i * p.window + p.slot] = static_cast<scalar_t>(total);
    if (kTracked && newest) {
      scratch[b * kScratch + kResidualSq] = total;
      scratch[b * kScratch + kImageSq] = image_total;
    }
  }
}

// One thread per sample: (tracked) the convergence bookkeeping, then the small solve for the mixing weights.
template <typename scalar_t, bool kTracked>
__global__ void solve_kernel(const AndersonStepParams p, const scalar_t* __restrict__ gram,
                             double* __restrict__ scratch, const TrackerOptions options,
                             const TrackerState<scalar_t> tracker) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  double* sample = scratch + b * kScratch;
  if (kTracked) {
    const bool copy_previous = track_sample(options, tracker, b, sample[kResidualSq], sample[kImageSq]);
    sample[kCopyPrevious] = copy_previous ? 1.0 : 0.0;
    if (!tracker.active[b]) return;  // stopped: the mix keeps x, no weights needed
  }
  double gram_window[kMaxAndersonWindow * kMaxAndersonWindow];
  const scalar_t* gb = gram + b * p.window * p.window;
  for (int64_t i = 0; i < p.valid; ++i) {
    for (int64_t j = 0; j < p.valid; ++j) gram_window[i * p.valid + j] = double(gb[i * p.window + j]);
  }
  double weights[kMaxAndersonWindow];
  anderson_weights_of_finite_slots<double>(gram_window, static_cast<int>(p.valid), static_cast<int>(p.slot), p.lam,
                                           weights);
  for (int64_t i = 0; i < p.valid; ++i) sample[kAlpha + i] = weights[i];
}

// Grid-stride over packs of kVec elements; dim % kVec == 0, so a pack never straddles two samples.
template <typename scalar_t, bool kDamped, bool kTracked, int kVec>
__global__ void mix_kernel(const AndersonStepParams p, const scalar_t* __restrict__ x,
                           const scalar_t* __restrict__ g_history, const scalar_t* __restrict__ f_history,
                           const double* __restrict__ scratch, scalar_t* __restrict__ x_next,
                           const TrackerState<scalar_t> tracker) {
  const int64_t total = p.batch * p.dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kVec;
  const double damping = 1 - p.beta;
  for (int64_t e = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec; e < total; e += stride) {
    const int64_t b = e / p.dim;
    const int64_t k = e % p.dim;
    const double* sample = scratch + b * kScratch;
    if (kTracked) {
      if (sample[kCopyPrevious] != 0.0) store_pack<kVec>(tracker.best + e, load_pack<kVec>(tracker.previous + e));
      if (!tracker.active[b]) {  // stopped: keeps its iterate, reads no history
        store_pack<kVec>(x_next + e, load_pack<kVec>(x + e));
        continue;
      }
    }
    const scalar_t* gh = g_history + b * p.window * p.dim;
    const scalar_t* fh = f_history + b * p.window * p.dim;
    double mixed[kVec] = {};
    for (int64_t i = 0; i < p.valid; ++i) {
      const double alpha = sample[kAlpha + i];
      // skipped, not added as 0 * f_i: the slot may hold a non-finite residual (anderson_weights_of_finite_slots)
      if (alpha == 0.0) continue;
      const Pack<scalar_t, kVec> f = load_pack<kVec>(fh + i * p.dim + k);
      Pack<scalar_t, kVec> g{};
      if (kDamped) g = load_pack<kVec>(gh + i * p.dim + k);  // beta = 1 never reads the residuals
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        double term = double(f.v[j]);
        if (kDamped) term -= damping * double(g.v[j]);
        mixed[j] += alpha * term;
      }
    }
    Pack<scalar_t, kVec> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) out.v[j] = static_cast<scalar_t>(mixed[j]);
    store_pack<kVec>(x_next + e, out);
  }
}

// Whether the kernels may move kVec elements per 16-byte access: every sample and history slot must start on a
// 16-byte boundary (dim a multiple of kVec, base pointers aligned; a view with an odd offset falls back to kVec = 1).
bool can_vectorize(int64_t dim, int64_t vec, std::initializer_list<const void*> pointers) {
  if (dim % vec != 0) return false;
  for (const void* pointer : pointers) {
    if (pointer != nullptr && reinterpret_cast<uintptr_t>(pointer) % 16 != 0) return false;
  }
  return true;
}

// The AndersonStepRunner of this backend (anderson.h).
at::Tensor run_anderson_step(const AndersonStepParams& params, const at::Tensor& x, const at::Tensor& fx,
                             at::Tensor& g_history, at::Tensor& f_history, at::Tensor& gram,
                             const AndersonTrackerTensors* tracker, const TrackerOptions& options) {
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x_c = x.contiguous();
  const at::Tensor fx_c = fx.contiguous();
  at::Tensor x_next = at::empty_like(x_c);
  if (params.batch == 0) return x_next;
  TORCH_CHECK(params.batch <= 65535, "anderson_step: batch must be <= 65535 on CUDA; got batch=", params.batch);
  at::Tensor scratch = at::empty({params.batch, kScratch}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "anderson_step_cuda", [&] {
    const TrackerState<scalar_t> state = tracker_state<scalar_t>(tracker);
    // 16 bytes per access where every sample and slot is 16-byte aligned (any dim % 4 == 0 float state).
    constexpr int kWide = 16 / sizeof(scalar_t);
    const bool wide = can_vectorize(params.dim, kWide,
                                    {x_c.const_data_ptr(), fx_c.const_data_ptr(), g_history.const_data_ptr(),
                                     f_history.const_data_ptr(), x_next.const_data_ptr(),
                                     tracker ? tracker->previous.const_data_ptr() : nullptr,
                                     tracker ? tracker->best.const_data_ptr() : nullptr});
    const auto launch = [&](auto tracked, auto vec) {
      constexpr bool kTracked = decltype(tracked)::value;
      constexpr int kVec = decltype(vec)::value;
      const dim3 gram_grid(static_cast<unsigned>(params.valid), static_cast<unsigned>(params.batch));
      gram_update_kernel<scalar_t, kTracked, kVec><<<gram_grid, kReduceThreads, 0, stream>>>(
          params, x_c.const_data_ptr<scalar_t>(), fx_c.const_data_ptr<scalar_t>(),
          g_history.mutable_data_ptr<scalar_t>(), f_history.mutable_data_ptr<scalar_t>(),
          gram.mutable_data_ptr<scalar_t>(), scratch.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int solve_blocks = static_cast<int>((params.batch + 127) / 128);
      solve_kernel<scalar_t, kTracked><<<solve_blocks, 128, 0, stream>>>(
          params, gram.const_data_ptr<scalar_t>(), scratch.mutable_data_ptr<double>(), options, state);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t packs = params.batch * params.dim / kVec;
      if (packs == 0) return;  // empty states: the Gram and tracking kernels ran (residual 0), nothing to mix
      const int mix_blocks = static_cast<int>(std::min<int64_t>((packs + kMixThreads - 1) / kMixThreads, 65535));
      const auto launch_mix = [&](auto kernel) {
        kernel<<<mix_blocks, kMixThreads, 0, stream>>>(
            params, x_c.const_data_ptr<scalar_t>(), g_history.const_data_ptr<scalar_t>(),
            f_history.const_data_ptr<scalar_t>(), scratch.const_data_ptr<double>(),
            x_next.mutable_data_ptr<scalar_t>(), state);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (params.beta < 1) {
        launch_mix(mix_kernel<scalar_t, true, kTracked, kVec>);
      } else {
        launch_mix(mix_kernel<scalar_t, false, kTracked, kVec>);
      }
    };
    const auto launch_width = [&](auto tracked) {
      if (wide) {
        launch(tracked, std::integral_constant<int, kWide>{});
      } else {
        launch(tracked, std::integral_constant<int, 1>{});
      }
    };
    if (tracker) {
      launch_width(std::true_type{});
    } else {
      launch_width(std::false_type{});
    }
  });
  return x_next;
}

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CUDA, m) { register_anderson_ops<&run_anderson_step>(m); }

}  // namespace wtext
