// Per-sample convergence tracking inside an Anderson step, shared by the CPU and CUDA kernels of
// anderson_tracked_step.
//
// The semantics are those of ConvergenceTracker.update and keep_finished in wtext/deq/tracking.py (the tests run
// both on the same solves and compare), except that the best iterate is kept lazily (below) until the caller
// resolves the last mark after the solve. Doing it in the step's kernels turns ~20 small tensor ops and
// three passes over the state per iteration (residual, best-iterate and keep-finished `where`s) into a few scalar
// updates per sample, with the residual norms taken from data the Gram kernel streams anyway.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "anderson/anderson_solve.h"

namespace wtext {

// The tracker's tensors for one solve, in the solve's real type (float32 or float64).
//
// The best iterate is copied lazily: while a sample keeps improving, each new iterate becomes its best without a
// copy (best_pending), and only when a step does not improve on it is the previous iterate (still alive: the
// caller passes it as `previous`) copied into best. A converging solve thus copies almost nothing, where copying
// every improved iterate moved 2 of the ~16 passes over the state per iteration. After the last step, best is
// the last iterate where best_pending is set (the caller resolves that once).
template <typename real_t>
struct TrackerState {
  const real_t* previous;  // [B, d] the iterate of the previous step (x itself at step 0)
  real_t* best;            // [B, d] lowest-residual iterate so far, flattened like x, except where best_pending
  bool* best_pending;      // [B] the latest tracked iterate is the best and is not in best yet
  real_t* lowest;          // [B] the best iterate's residual (inf before the first finite one)
  real_t* first;           // [B] the first iterate's residual (0 if non-finite); set at step 0
  int64_t* steps;          // [B] iterations until the sample stopped
  bool* active;            // [B] still iterating
  bool* diverged;          // [B]
  bool* nonfinite;         // [B]
  real_t* trace;           // [B, trace_len] residual per step, NaN once stopped
};

struct TrackerOptions {
  int64_t step = 0;
  int64_t trace_len = 0;
  double tol = 0;
  double divergence_ratio = 1e3;
  bool relative = true;
};

// a / b rounded to nearest, also in CUDA code built with --use_fast_math (whose float division is approximate), so
// CPU and CUDA take the same stop decisions.
template <typename T>
WTEXT_HD T divide_rounded(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) {
    return __fdiv_rn(a, b);
  } else {
    return __ddiv_rn(a, b);
  }
#else
  return a / b;
#endif
}

// Updates sample b from the squared norms of its residual f(x) - x and of f(x). Returns whether the caller must
// copy the previous iterate into best now (it was the best and x is not better). Afterwards active[b] says whether
// the sample moves on.
template <typename real_t>
WTEXT_HD bool track_sample(const TrackerOptions& o, const TrackerState<real_t>& t, int64_t b, double residual_sq,
                           double image_sq) {
  // The norms are rounded to real_t before dividing, as per_sample_norm returns them in that type.
  real_t residual = static_cast<real_t>(square_root(residual_sq));
  if (o.relative) residual = divide_rounded(residual, static_cast<real_t>(square_root(image_sq)) + static_cast<real_t>(1e-8));
  const bool finite = finite_value(residual);
  if (o.step == 0) t.first[b] = finite ? residual : real_t(0);
  const bool active = t.active[b];
  t.trace[b * o.trace_len + o.step] = active ? residual : static_cast<real_t>(NAN);
  const bool improved = active && finite && residual < t.lowest[b];
  if (improved) t.lowest[b] = residual;
  if (active) t.steps[b] = o.step + 1;
  if (active && !finite) t.nonfinite[b] = true;
  const real_t first = t.first[b] > real_t(1e-30) ? t.first[b] : real_t(1e-30);
  const bool exploded = active && (!finite || residual > static_cast<real_t>(o.divergence_ratio) * first);
  if (exploded) t.diverged[b] = true;
  t.active[b] = active && !exploded && !(residual <= static_cast<real_t>(o.tol));
  const bool copy_previous = t.best_pending[b] && !improved;
  t.best_pending[b] = improved;
  return copy_previous;
}

}  // namespace wtext
