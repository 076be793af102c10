// CPU kernel of anderson_step: samples in parallel, each doing its m dot products, its small solve and its mix.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "anderson/anderson.h"
#include "anderson/anderson_solve.h"

namespace wtext {

namespace {

template <typename scalar_t>
void anderson_step_loop(const AndersonStepParams& p, const scalar_t* x, const scalar_t* fx, scalar_t* g_history,
                        scalar_t* f_history, scalar_t* gram, scalar_t* x_next) {
  at::parallel_for(0, p.batch, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const scalar_t* xb = x + b * p.dim;
      const scalar_t* fb = fx + b * p.dim;
      scalar_t* gh = g_history + b * p.window * p.dim;
      scalar_t* fh = f_history + b * p.window * p.dim;
      scalar_t* gb = gram + b * p.window * p.window;
      scalar_t* g_new = gh + p.slot * p.dim;
      for (int64_t k = 0; k < p.dim; ++k) g_new[k] = fb[k] - xb[k];
      std::copy(fb, fb + p.dim, fh + p.slot * p.dim);
      // Only the newest residual's row/column of the Gram matrix changes.
      for (int64_t i = 0; i < p.valid; ++i) {
        const scalar_t* gi = gh + i * p.dim;
        double dot = 0;
        for (int64_t k = 0; k < p.dim; ++k) dot += double(g_new[k]) * double(gi[k]);
        gb[p.slot * p.window + i] = static_cast<scalar_t>(dot);
        gb[i * p.window + p.slot] = static_cast<scalar_t>(dot);
      }
      double gram_window[kMaxAndersonWindow * kMaxAndersonWindow];
      for (int64_t i = 0; i < p.valid; ++i) {
        for (int64_t j = 0; j < p.valid; ++j) gram_window[i * p.valid + j] = gb[i * p.window + j];
      }
      double alpha[kMaxAndersonWindow];
      anderson_weights<double>(gram_window, static_cast<int>(p.valid), static_cast<int>(p.valid),
                               static_cast<int>(p.slot), p.lam, alpha);
      scalar_t* out = x_next + b * p.dim;
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

at::Tensor anderson_step_cpu(const at::Tensor& x, const at::Tensor& fx, at::Tensor& g_history, at::Tensor& f_history,
                             at::Tensor& gram, int64_t step, double lam, double beta) {
  const AndersonStepParams params = check_anderson_step(x, fx, g_history, f_history, gram, step, lam, beta);
  const at::Tensor x_c = x.contiguous();
  const at::Tensor fx_c = fx.contiguous();
  at::Tensor x_next = at::empty_like(x_c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "anderson_step_cpu", [&] {
    anderson_step_loop<scalar_t>(params, x_c.const_data_ptr<scalar_t>(), fx_c.const_data_ptr<scalar_t>(),
                                 g_history.mutable_data_ptr<scalar_t>(), f_history.mutable_data_ptr<scalar_t>(),
                                 gram.mutable_data_ptr<scalar_t>(), x_next.mutable_data_ptr<scalar_t>());
  });
  return x_next;
}

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CPU, m) { m.impl("anderson_step", &anderson_step_cpu); }

}  // namespace wtext
