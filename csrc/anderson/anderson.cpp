// Schema and argument checks of anderson_step.
//
// anderson_step(x, fx, g_history, f_history, gram, step, lam, beta) -> x_next
//   x, fx:      [B, d]     the current iterate and f(x)
//   g_history:  [B, m, d]  ring buffer of residuals g = f(x) - x  (updated in place: slot step % m <- fx - x)
//   f_history:  [B, m, d]  ring buffer of f(iterates)            (updated in place: slot step % m <- fx)
//   gram:       [B, m, m]  Gram matrix of the residuals in the window (updated in place: only the newest
//                          residual's row and column are recomputed, m dot products instead of m^2)
//   x_next:     [B, d]     sum_i alpha_i (beta f_i + (1 - beta) x_i) = sum_i alpha_i f_i - (1 - beta) sum_i alpha_i g_i,
//                          alpha from anderson_solve.h
// Keeping residuals rather than iterates is what the step reads most: the Gram update streams the m residuals
// once, and with beta = 1 the mix streams only the m images, so a step moves (m + 2) d values in and 3 d out per
// sample instead of recomputing f_i - x_i from two histories.
// The residual norm of the newest iterate is sqrt(gram[:, step % m, step % m]) afterwards, so callers can track
// convergence on the device without another reduction.
//
// anderson_tracked_step(x, fx, g_history, f_history, gram, previous_x, best, best_pending, lowest, first, steps,
//                       active, diverged, nonfinite, trace, step, lam, beta, tol, relative, divergence_ratio) -> x_next
//   The same step with the solver's convergence tracking fused in (anderson_track.h; the semantics of
//   ConvergenceTracker.update + keep_finished in wtext/deq/tracking.py): the tracker tensors are updated in place
//   from this iterate's residual and a sample that stopped (now or before) gets x_next = x. The best iterate is
//   kept lazily (anderson_track.h): previous_x is the previous step's x (x itself at step 0), and after the last
//   step the best iterate is x where best_pending is set, `best` elsewhere.
#include "anderson/anderson.h"

#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <utility>

#include "anderson/anderson_solve.h"

namespace wtext {

// PyTorch's rule for its own in-place ops: a tensor made under torch.inference_mode() is updated in place only inside
// inference mode (the kernels write through data pointers, so the dispatcher would not enforce it for them).
void check_updatable(const at::Tensor& tensor, const char* op, const char* name) {
  TORCH_CHECK(!tensor.is_inference() || c10::InferenceMode::is_enabled(), op, ": ", name,
              " was made under torch.inference_mode() and is updated in place: call ", op,
              " inside inference mode too, or make ", name, " outside it");
}

void check_anderson_step(const at::Tensor& x, const at::Tensor& fx, const at::Tensor& g_history,
                         const at::Tensor& f_history, const at::Tensor& gram, int64_t step, double lam, double beta) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "anderson_step: x must be float32 or float64; got x.dtype=", x.scalar_type());
  TORCH_CHECK(x.dim() == 2, "anderson_step: x must have shape [B, d]; got x.shape=", x.sym_sizes());
  TORCH_CHECK(g_history.dim() == 3 && g_history.sym_size(0) == x.sym_size(0) && g_history.sym_size(2) == x.sym_size(1),
              "anderson_step: g_history must have shape [B, m, d] = [", x.sym_size(0), ", m, ", x.sym_size(1),
              "]; got g_history.shape=", g_history.sym_sizes());
  const c10::SymInt window = g_history.sym_size(1);
  TORCH_CHECK(window >= 1 && window <= kMaxAndersonWindow, "anderson_step: the window m must be in [1, ",
              kMaxAndersonWindow, "]; got m=", window);
  TORCH_CHECK(fx.sym_sizes() == x.sym_sizes(), "anderson_step: fx must have x's shape ", x.sym_sizes(),
              "; got fx.shape=", fx.sym_sizes());
  TORCH_CHECK(f_history.sym_sizes() == g_history.sym_sizes(), "anderson_step: f_history must have g_history's shape ",
              g_history.sym_sizes(), "; got f_history.shape=", f_history.sym_sizes());
  TORCH_CHECK(gram.dim() == 3 && gram.sym_size(0) == x.sym_size(0) && gram.sym_size(1) == window &&
                  gram.sym_size(2) == window,
              "anderson_step: gram must have shape [B, m, m] = [", x.sym_size(0), ", ", window, ", ", window,
              "]; got gram.shape=", gram.sym_sizes());
  const std::pair<const char*, const at::Tensor*> others[] = {
      {"fx", &fx}, {"g_history", &g_history}, {"f_history", &f_history}, {"gram", &gram}};
  for (const auto& [name, tensor] : others) {
    TORCH_CHECK(tensor->scalar_type() == x.scalar_type(), "anderson_step: all tensors must have x's dtype ",
                x.scalar_type(), "; got ", name, ".dtype=", tensor->scalar_type());
    TORCH_CHECK(tensor->device() == x.device(), "anderson_step: all tensors must be on x's device ", x.device(),
                "; got ", name, ".device=", tensor->device());
  }
  for (const auto& [name, tensor] : others) {
    if (tensor == &fx) continue;
    TORCH_CHECK(tensor->is_contiguous(), "anderson_step: g_history, f_history and gram must be contiguous (they are "
                "updated in place); got a non-contiguous ", name);
    check_updatable(*tensor, "anderson_step", name);
  }
  TORCH_CHECK(step >= 0, "anderson_step: step must be >= 0; got step=", step);
  TORCH_CHECK(lam >= 0 && std::isfinite(lam), "anderson_step: lam must be a finite number >= 0; got lam=", lam);
  TORCH_CHECK(beta > 0 && beta <= 1, "anderson_step: beta must be in (0, 1]; got beta=", beta);
}

AndersonStepParams anderson_step_params(const at::Tensor& x, const at::Tensor& g_history, int64_t step, double lam,
                                        double beta) {
  AndersonStepParams params;
  params.batch = x.size(0);
  params.dim = x.size(1);
  params.window = g_history.size(1);
  params.slot = step % params.window;
  params.valid = std::min<int64_t>(step + 1, params.window);
  params.lam = lam;
  params.beta = beta;
  return params;
}

void check_anderson_tracked_step(const at::Tensor& x, const at::Tensor& fx, const at::Tensor& g_history,
                                 const at::Tensor& f_history, const at::Tensor& gram, const at::Tensor& previous_x,
                                 const at::Tensor& best, const at::Tensor& best_pending, const at::Tensor& lowest,
                                 const at::Tensor& first, const at::Tensor& steps, const at::Tensor& active,
                                 const at::Tensor& diverged, const at::Tensor& nonfinite, const at::Tensor& trace,
                                 int64_t step, double lam, double beta, double tol, bool /*relative*/,
                                 double divergence_ratio) {
  check_anderson_step(x, fx, g_history, f_history, gram, step, lam, beta);
  const c10::SymInt batch = x.sym_size(0);
  const auto check = [&](const at::Tensor& tensor, const char* name, at::ScalarType dtype,
                         std::initializer_list<c10::SymInt> shape) {
    TORCH_CHECK(tensor.sym_sizes() == c10::SymIntArrayRef(shape), "anderson_tracked_step: ", name, " must have shape ",
                c10::SymIntArrayRef(shape), "; got ", name, ".shape=", tensor.sym_sizes());
    TORCH_CHECK(tensor.scalar_type() == dtype, "anderson_tracked_step: ", name, " must have dtype ", dtype, "; got ",
                name, ".dtype=", tensor.scalar_type());
    TORCH_CHECK(tensor.device() == x.device(), "anderson_tracked_step: ", name, " must be on x's device ", x.device(),
                "; got ", name, ".device=", tensor.device());
    TORCH_CHECK(tensor.is_contiguous(), "anderson_tracked_step: ", name,
                " must be contiguous (it is updated in place)");
    check_updatable(tensor, "anderson_tracked_step", name);
  };
  const at::ScalarType real = x.scalar_type();
  TORCH_CHECK(previous_x.sym_sizes() == x.sym_sizes() && previous_x.scalar_type() == real &&
                  previous_x.device() == x.device(),
              "anderson_tracked_step: previous_x must be like x (shape ", x.sym_sizes(), ", ", real, ", on ",
              x.device(), "); got previous_x.shape=", previous_x.sym_sizes(), ", ", previous_x.scalar_type(), ", on ",
              previous_x.device());
  check(best, "best", real, {batch, x.sym_size(1)});
  check(best_pending, "best_pending", at::kBool, {batch});
  check(lowest, "lowest", real, {batch});
  check(first, "first", real, {batch});
  check(steps, "steps", at::kLong, {batch});
  check(active, "active", at::kBool, {batch});
  check(diverged, "diverged", at::kBool, {batch});
  check(nonfinite, "nonfinite", at::kBool, {batch});
  TORCH_CHECK(trace.dim() == 2 && trace.sym_size(1) > step,
              "anderson_tracked_step: trace must have shape [B, max_iter] with max_iter > step=", step,
              "; got trace.shape=", trace.sym_sizes());
  check(trace, "trace", real, {batch, trace.sym_size(1)});
  TORCH_CHECK(tol > 0, "anderson_tracked_step: tol must be > 0; got tol=", tol);
  TORCH_CHECK(divergence_ratio > 1, "anderson_tracked_step: divergence_ratio must be > 1; got divergence_ratio=",
              divergence_ratio);
}

TrackerOptions tracker_options(const AndersonTrackerTensors& tracker, int64_t step, double tol, bool relative,
                               double divergence_ratio) {
  TrackerOptions options;
  options.step = step;
  options.trace_len = tracker.trace.size(1);
  options.tol = tol;
  options.divergence_ratio = divergence_ratio;
  options.relative = relative;
  return options;
}

TORCH_LIBRARY_FRAGMENT(wtext, m) {
  m.def(
      "anderson_step(Tensor x, Tensor fx, Tensor(a!) g_history, Tensor(b!) f_history, Tensor(c!) gram, int step, "
      "float lam, float beta) -> Tensor");
  m.def(
      "anderson_tracked_step(Tensor x, Tensor fx, Tensor(a!) g_history, Tensor(b!) f_history, Tensor(c!) gram, "
      "Tensor previous_x, Tensor(d!) best, Tensor(e!) best_pending, Tensor(f!) lowest, Tensor(g!) first, "
      "Tensor(h!) steps, Tensor(i!) active, Tensor(j!) diverged, Tensor(k!) nonfinite, Tensor(l!) trace, int step, "
      "float lam, float beta, float tol, bool relative, float divergence_ratio) -> Tensor");
}

}  // namespace wtext
