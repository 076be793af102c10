// CUDA kernels of anderson_step. Three launches on the current stream, no host synchronization, so a fixed-budget
// solve loop can be captured in a CUDA graph:
//   1. residual_dots: blocks over (chunk of d, sample): form the newest residual g = f - x, store it and f in the
//                     ring buffers, and accumulate its dot products with every residual in the window, reading each
//                     stored residual once (m reductions over d, not m^2). Per-chunk partial sums go to a buffer.
//   2. solve:         one thread per sample: sums the partials in a fixed order (deterministic), writes the Gram
//                     row and column, and solves the regularized (m x m) system of anderson_solve.h in double.
//   3. mix:           blocks over (chunk of d, sample): x_next = sum_i alpha_i f_i - (1 - beta) sum_i alpha_i g_i.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "anderson/anderson.h"
#include "anderson/anderson_solve.h"

namespace wtext {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements of one sample per block: enough work per thread, enough blocks per GPU

template <typename scalar_t>
__global__ void residual_dots_kernel(const AndersonStepParams p, const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ fx, scalar_t* __restrict__ g_history,
                                     scalar_t* __restrict__ f_history, double* __restrict__ partials) {
  const int64_t b = blockIdx.y;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = min(begin + kChunk, p.dim);
  const scalar_t* xb = x + b * p.dim;
  const scalar_t* fb = fx + b * p.dim;
  scalar_t* gh = g_history + b * p.window * p.dim;
  scalar_t* fh = f_history + b * p.window * p.dim;
  // Register accumulators, indexed only by unrolled constants (a run-time index would move them to local memory).
  double dots[kMaxAndersonWindow];
#pragma unroll
  for (int i = 0; i < kMaxAndersonWindow; ++i) dots[i] = 0;
  for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
    const scalar_t f = fb[k];
    const scalar_t g = f - xb[k];
    // Each element is read and written by this thread only, so updating the newest slot in place is race-free.
    gh[p.slot * p.dim + k] = g;
    fh[p.slot * p.dim + k] = f;
#pragma unroll
    for (int i = 0; i < kMaxAndersonWindow; ++i) {
      if (i < p.valid) {
        const scalar_t other = i == p.slot ? g : gh[i * p.dim + k];
        dots[i] += double(g) * double(other);
      }
    }
  }
  __shared__ double warp_dots[kThreads / 32][kMaxAndersonWindow];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < kMaxAndersonWindow; ++i) {
    if (i < p.valid) {
      double v = dots[i];
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
      if (lane == 0) warp_dots[warp][i] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x < p.valid) {
    double total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_dots[w][threadIdx.x];
    partials[(b * gridDim.x + blockIdx.x) * kMaxAndersonWindow + threadIdx.x] = total;
  }
}

template <typename scalar_t>
__global__ void solve_kernel(const AndersonStepParams p, int64_t chunks, const double* __restrict__ partials,
                             scalar_t* __restrict__ gram, double* __restrict__ alpha) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  scalar_t* gb = gram + b * p.window * p.window;
  for (int64_t i = 0; i < p.valid; ++i) {
    double dot = 0;
    for (int64_t c = 0; c < chunks; ++c) dot += partials[(b * chunks + c) * kMaxAndersonWindow + i];
    gb[p.slot * p.window + i] = static_cast<scalar_t>(dot);
    gb[i * p.window + p.slot] = static_cast<scalar_t>(dot);
  }
  double gram_window[kMaxAndersonWindow * kMaxAndersonWindow];
  for (int64_t i = 0; i < p.valid; ++i) {
    for (int64_t j = 0; j < p.valid; ++j) gram_window[i * p.valid + j] = double(gb[i * p.window + j]);
  }
  double weights[kMaxAndersonWindow];
  anderson_weights<double>(gram_window, static_cast<int>(p.valid), static_cast<int>(p.valid), static_cast<int>(p.slot),
                           p.lam, weights);
  for (int64_t i = 0; i < p.valid; ++i) alpha[b * kMaxAndersonWindow + i] = weights[i];
}

template <typename scalar_t, bool kDamped>
__global__ void mix_kernel(const AndersonStepParams p, const scalar_t* __restrict__ g_history,
                           const scalar_t* __restrict__ f_history, const double* __restrict__ alpha,
                           scalar_t* __restrict__ x_next) {
  const int64_t b = blockIdx.y;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = min(begin + kChunk, p.dim);
  const scalar_t* gh = g_history + b * p.window * p.dim;
  const scalar_t* fh = f_history + b * p.window * p.dim;
  double weights[kMaxAndersonWindow];
#pragma unroll
  for (int i = 0; i < kMaxAndersonWindow; ++i) weights[i] = i < p.valid ? alpha[b * kMaxAndersonWindow + i] : 0.0;
  const double damping = 1 - p.beta;
  for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
    double mixed = 0;
#pragma unroll
    for (int i = 0; i < kMaxAndersonWindow; ++i) {
      if (i < p.valid) {
        double term = double(fh[i * p.dim + k]);
        if (kDamped) term -= damping * double(gh[i * p.dim + k]);  // beta = 1 never reads the residuals
        mixed += weights[i] * term;
      }
    }
    x_next[b * p.dim + k] = static_cast<scalar_t>(mixed);
  }
}

at::Tensor anderson_step_cuda(const at::Tensor& x, const at::Tensor& fx, at::Tensor& g_history,
                              at::Tensor& f_history, at::Tensor& gram, int64_t step, double lam, double beta) {
  const AndersonStepParams params = check_anderson_step(x, fx, g_history, f_history, gram, step, lam, beta);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x_c = x.contiguous();
  const at::Tensor fx_c = fx.contiguous();
  at::Tensor x_next = at::empty_like(x_c);
  if (params.batch == 0 || params.dim == 0) return x_next;
  TORCH_CHECK(params.batch <= 65535, "anderson_step: batch must be <= 65535 on CUDA; got batch=", params.batch);
  const int64_t chunks = (params.dim + kChunk - 1) / kChunk;
  const at::TensorOptions doubles = x.options().dtype(at::kDouble);
  at::Tensor partials = at::empty({params.batch, chunks, kMaxAndersonWindow}, doubles);
  at::Tensor alpha = at::empty({params.batch, kMaxAndersonWindow}, doubles);
  const dim3 chunk_grid(static_cast<unsigned>(chunks), static_cast<unsigned>(params.batch));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "anderson_step_cuda", [&] {
    residual_dots_kernel<scalar_t><<<chunk_grid, kThreads, 0, stream>>>(
        params, x_c.const_data_ptr<scalar_t>(), fx_c.const_data_ptr<scalar_t>(), g_history.mutable_data_ptr<scalar_t>(),
        f_history.mutable_data_ptr<scalar_t>(), partials.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int solve_blocks = static_cast<int>((params.batch + 127) / 128);
    solve_kernel<scalar_t><<<solve_blocks, 128, 0, stream>>>(params, chunks, partials.const_data_ptr<double>(),
                                                             gram.mutable_data_ptr<scalar_t>(),
                                                             alpha.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto launch_mix = [&](auto kernel) {
      kernel<<<chunk_grid, kThreads, 0, stream>>>(params, g_history.const_data_ptr<scalar_t>(),
                                                  f_history.const_data_ptr<scalar_t>(), alpha.const_data_ptr<double>(),
                                                  x_next.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (params.beta < 1) {
      launch_mix(mix_kernel<scalar_t, true>);
    } else {
      launch_mix(mix_kernel<scalar_t, false>);
    }
  });
  return x_next;
}

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CUDA, m) { m.impl("anderson_step", &anderson_step_cuda); }

}  // namespace wtext
