// CPU kernels of anderson_step and anderson_tracked_step: samples in parallel, each doing its m dot products, its
// small solve and its mix (and, tracked, its convergence bookkeeping in between).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "anderson/anderson.h"
#include "anderson/anderson_solve.h"

namespace wtext {

namespace {

// One step for every sample; with a tracker (kTracked) the sample's convergence is updated between the Gram update
// and the mix, and a sample that stopped keeps x.
template <bool kTracked, typename scalar_t>
void anderson_step_loop(const AndersonStepParams& p, const scalar_t* x, const scalar_t* fx, scalar_t* g_history,
                        scalar_t* f_history, scalar_t* gram, scalar_t* x_next, const TrackerOptions& options,
                        const TrackerState<scalar_t>& tracker) {
  at::parallel_for(0, p.batch, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const scalar_t* xb = x + b * p.dim;
      const scalar_t* fb = fx + b * p.dim;
      scalar_t* gh = g_history + b * p.window * p.dim;
      scalar_t* fh = f_history + b * p.window * p.dim;
      scalar_t* gb = gram + b * p.window * p.window;
      scalar_t* g_new = gh + p.slot * p.dim;
      double image_sq = 0;
      for (int64_t k = 0; k < p.dim; ++k) {
        g_new[k] = fb[k] - xb[k];
        if (kTracked) image_sq += double(fb[k]) * double(fb[k]);
      }
      std::copy(fb, fb + p.dim, fh + p.slot * p.dim);
      // Only the newest residual's row/column of the Gram matrix changes.
      double residual_sq = 0;
      for (int64_t i = 0; i < p.valid; ++i) {
        const scalar_t* gi = gh + i * p.dim;
        double dot = 0;
        for (int64_t k = 0; k < p.dim; ++k) dot += double(g_new[k]) * double(gi[k]);
        gb[p.slot * p.window + i] = static_cast<scalar_t>(dot);
        gb[i * p.window + p.slot] = static_cast<scalar_t>(dot);
        if (i == p.slot) residual_sq = dot;
      }
      scalar_t* out = x_next + b * p.dim;
      if constexpr (kTracked) {
        if (track_sample(options, tracker, b, residual_sq, image_sq)) {
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
      anderson_weights<double>(gram_window, static_cast<int>(p.valid), static_cast<int>(p.valid),
                               static_cast<int>(p.slot), p.lam, alpha);
      const double damping = 1 - p.beta;
      for (int64_t k = 0; k < p.dim; ++k) {
        double mixed = 0;
        for (int64_t i = 0; i < p.valid; ++i) {
          mixed += alpha[i] * (double(fh[i * p.dim + k]) - damping * double(gh[i * p.dim + k]));
        }
        out[k] = static_cast<scalar_t>(mixed);
      }
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
