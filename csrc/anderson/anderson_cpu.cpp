// CPU kernels of anderson_step and anderson_tracked_step: samples in parallel, each doing its m dot products, its
// small solve and its mix (and, tracked, its convergence bookkeeping in between).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "anderson/anderson.h"
#include "anderson/anderson_solve.h"

namespace wtext {

namespace {

// |g|^2 and |f|^2 of the newest residual and image (the latter only when kImage).
struct ResidualNorms {
  double residual_sq = 0;  // the new diagonal entry before rounding to the Gram matrix's type
  double image_sq = 0;     // for the relative residual
};

// sum_k a[k] * b[k] in float64. The simd reduction lets the compiler keep several partial sums (vectorized); a
// plain loop is one chain of dependent adds. With plain loops a step took 611 us, with these and the slot-by-slot
// mix below 304 us (B=8, d=16384, m=5, dev CPU, 2 threads).
template <typename scalar_t>
double dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < n; ++k) sum += double(a[k]) * double(b[k]);
  return sum;
}

// The newest residual's row of the Gram matrix: g = f - x is written to its slot (and f to its own) in one pass
// that also sums |g|^2 and |f|^2, then one dot product per older stored residual.
template <bool kImage, typename scalar_t>
ResidualNorms update_gram_row(const AndersonStepParams& p, const scalar_t* xb, const scalar_t* fb, scalar_t* gh,
                              scalar_t* fh, scalar_t* gb) {
  scalar_t* g_new = gh + p.slot * p.dim;
  scalar_t* f_new = fh + p.slot * p.dim;
  double residual_sq = 0;
  double image_sq = 0;
#pragma omp simd reduction(+ : residual_sq, image_sq)
  for (int64_t k = 0; k < p.dim; ++k) {
    const scalar_t f = fb[k];
    const scalar_t g = f - xb[k];  // rounded like the stored residual, so every Gram entry sees the same values
    g_new[k] = g;
    f_new[k] = f;
    residual_sq += double(g) * double(g);
    if (kImage) image_sq += double(f) * double(f);
  }
  for (int64_t i = 0; i < p.valid; ++i) {
    const double entry = i == p.slot ? residual_sq : dot(g_new, gh + i * p.dim, p.dim);
    gb[p.slot * p.window + i] = static_cast<scalar_t>(entry);
    gb[i * p.window + p.slot] = static_cast<scalar_t>(entry);
  }
  return {residual_sq, image_sq};
}

// x_next = sum_i alpha_i f_i - (1 - beta) sum_i alpha_i g_i, accumulated in float64 slot by slot (contiguous
// streams the compiler vectorizes); beta = 1 never reads the residuals. A slot with alpha_i = 0 is skipped, not
// added as 0 * f_i: it may hold a non-finite residual (anderson_weights_of_finite_slots), and 0 * NaN is NaN.
template <typename scalar_t>
void mix(const AndersonStepParams& p, const double* alpha, const scalar_t* gh, const scalar_t* fh, double* mixed,
         scalar_t* out) {
  const double damping = 1 - p.beta;
  std::fill(mixed, mixed + p.dim, 0.0);
  for (int64_t i = 0; i < p.valid; ++i) {
    if (alpha[i] == 0) continue;
    const scalar_t* fi = fh + i * p.dim;
    for (int64_t k = 0; k < p.dim; ++k) mixed[k] += alpha[i] * double(fi[k]);
    if (damping != 0) {
      const scalar_t* gi = gh + i * p.dim;
      const double weight = alpha[i] * damping;
      for (int64_t k = 0; k < p.dim; ++k) mixed[k] -= weight * double(gi[k]);
    }
  }
  for (int64_t k = 0; k < p.dim; ++k) out[k] = static_cast<scalar_t>(mixed[k]);
}

// One step for every sample; with a tracker (kTracked) the sample's convergence is updated between the Gram update
// and the mix, and a sample that stopped keeps x.
template <bool kTracked, typename scalar_t>
void anderson_step_loop(const AndersonStepParams& p, const scalar_t* x, const scalar_t* fx, scalar_t* g_history,
                        scalar_t* f_history, scalar_t* gram, scalar_t* x_next, const TrackerOptions& options,
                        const TrackerState<scalar_t>& tracker) {
  at::parallel_for(0, p.batch, 1, [&](int64_t first, int64_t last) {
    std::vector<double> mixed(static_cast<size_t>(p.dim));
    for (int64_t b = first; b < last; ++b) {
      const scalar_t* xb = x + b * p.dim;
      scalar_t* gh = g_history + b * p.window * p.dim;
      scalar_t* fh = f_history + b * p.window * p.dim;
      scalar_t* gb = gram + b * p.window * p.window;
      const ResidualNorms norms = update_gram_row<kTracked>(p, xb, fx + b * p.dim, gh, fh, gb);
      scalar_t* out = x_next + b * p.dim;
      if constexpr (kTracked) {
        if (track_sample(options, tracker, b, norms.residual_sq, norms.image_sq)) {
          const scalar_t* previous = tracker.previous + b * p.dim;
          std::copy(previous, previous + p.dim, tracker.best + b * p.dim);
        }
        if (!tracker.active[b]) {  // stopped: keeps its iterate
          std::copy(xb, xb + p.dim, out);
          continue;
        }
      }
      double gram_window[kMaxAndersonWindow * kMaxAndersonWindow];
      for (int64_t i = 0; i < p.valid; ++i) {
        for (int64_t j = 0; j < p.valid; ++j) gram_window[i * p.valid + j] = gb[i * p.window + j];
      }
      double alpha[kMaxAndersonWindow];
      anderson_weights_of_finite_slots<double>(gram_window, static_cast<int>(p.valid), static_cast<int>(p.slot), p.lam,
                                               alpha);
      mix(p, alpha, gh, fh, mixed.data(), out);
    }
  });
}

// The AndersonStepRunner of this backend (anderson.h).
at::Tensor run_anderson_step(const AndersonStepParams& params, const at::Tensor& x, const at::Tensor& fx,
                             at::Tensor& g_history, at::Tensor& f_history, at::Tensor& gram,
                             const AndersonTrackerTensors* tracker, const TrackerOptions& options) {
  const at::Tensor x_c = x.contiguous();
  const at::Tensor fx_c = fx.contiguous();
  at::Tensor x_next = at::empty_like(x_c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "anderson_step_cpu", [&] {
    const auto run = [&](auto tracked) {
      anderson_step_loop<decltype(tracked)::value, scalar_t>(
          params, x_c.const_data_ptr<scalar_t>(), fx_c.const_data_ptr<scalar_t>(),
          g_history.mutable_data_ptr<scalar_t>(), f_history.mutable_data_ptr<scalar_t>(),
          gram.mutable_data_ptr<scalar_t>(), x_next.mutable_data_ptr<scalar_t>(), options,
          tracker_state<scalar_t>(tracker));
    };
    if (tracker) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
  return x_next;
}

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CPU, m) { register_anderson_ops<&run_anderson_step>(m); }

}  // namespace wtext
