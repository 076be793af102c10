// One Anderson-acceleration step, the per-iteration work of wtext's DEQ solver, as an op with CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include "anderson/anderson_track.h"

namespace wtext {

// What the kernels of one step need; filled by anderson_step_params.
struct AndersonStepParams {
  int64_t batch = 0;
  int64_t dim = 0;     // flattened state size per sample
  int64_t window = 0;  // m: history slots
  int64_t slot = 0;    // where the newest (x, f(x)) goes: step % m
  int64_t valid = 0;   // slots holding history after this step: min(step + 1, m)
  double lam = 1e-4;
  double beta = 1.0;
};

// The argument checks of anderson_step and anderson_tracked_step, each taking its op's arguments: shapes, dtypes,
// devices, layouts and options (errors name the argument and the value). They read no data and take symbolic sizes,
// so the fake kernels (wtext/ops/fake.py) call them too.
void check_anderson_step(const at::Tensor& x, const at::Tensor& fx, const at::Tensor& g_history,
                         const at::Tensor& f_history, const at::Tensor& gram, int64_t step, double lam, double beta);
void check_anderson_tracked_step(const at::Tensor& x, const at::Tensor& fx, const at::Tensor& g_history,
                                 const at::Tensor& f_history, const at::Tensor& gram, const at::Tensor& previous_x,
                                 const at::Tensor& best, const at::Tensor& best_pending, const at::Tensor& lowest,
                                 const at::Tensor& first, const at::Tensor& steps, const at::Tensor& active,
                                 const at::Tensor& diverged, const at::Tensor& nonfinite, const at::Tensor& trace,
                                 int64_t step, double lam, double beta, double tol, bool relative,
                                 double divergence_ratio);

// The step's params, for arguments check_anderson_step has passed.
AndersonStepParams anderson_step_params(const at::Tensor& x, const at::Tensor& g_history, int64_t step, double lam,
                                        double beta);

// The tracker tensors of anderson_tracked_step (see anderson_track.h), in the order of the schema.
struct AndersonTrackerTensors {
  at::Tensor previous, best, best_pending, lowest, first, steps, active, diverged, nonfinite, trace;
};

// Raw pointers to the tracker tensors for the kernels (all null for anderson_step, tracker == nullptr).
template <typename real_t>
TrackerState<real_t> tracker_state(const AndersonTrackerTensors* tracker) {
  if (tracker == nullptr) return TrackerState<real_t>{};
  return {tracker->previous.const_data_ptr<real_t>(),  tracker->best.mutable_data_ptr<real_t>(),
          tracker->best_pending.mutable_data_ptr<bool>(), tracker->lowest.mutable_data_ptr<real_t>(),
          tracker->first.mutable_data_ptr<real_t>(),   tracker->steps.mutable_data_ptr<int64_t>(),
          tracker->active.mutable_data_ptr<bool>(),    tracker->diverged.mutable_data_ptr<bool>(),
          tracker->nonfinite.mutable_data_ptr<bool>(), tracker->trace.mutable_data_ptr<real_t>()};
}

// The step's tracking options, for arguments check_anderson_tracked_step has passed.
TrackerOptions tracker_options(const AndersonTrackerTensors& tracker, int64_t step, double tol, bool relative,
                               double divergence_ratio);

// A backend's step: the kernels of both ops for already-checked arguments; tracker == nullptr is anderson_step.
using AndersonStepRunner = at::Tensor (*)(const AndersonStepParams& params, const at::Tensor& x, const at::Tensor& fx,
                                          at::Tensor& g_history, at::Tensor& f_history, at::Tensor& gram,
                                          const AndersonTrackerTensors* tracker, const TrackerOptions& options);

// Registers anderson_step and anderson_tracked_step for one backend's dispatch key (m): checks, then its runner.
template <AndersonStepRunner run>
void register_anderson_ops(torch::Library& m) {
  m.impl("anderson_step", [](const at::Tensor& x, const at::Tensor& fx, at::Tensor& g_history, at::Tensor& f_history,
                             at::Tensor& gram, int64_t step, double lam, double beta) {
    check_anderson_step(x, fx, g_history, f_history, gram, step, lam, beta);
    const AndersonStepParams params = anderson_step_params(x, g_history, step, lam, beta);
    return run(params, x, fx, g_history, f_history, gram, nullptr, TrackerOptions{});
  });
  m.impl("anderson_tracked_step",
         [](const at::Tensor& x, const at::Tensor& fx, at::Tensor& g_history, at::Tensor& f_history, at::Tensor& gram,
            const at::Tensor& previous_x, at::Tensor& best, at::Tensor& best_pending, at::Tensor& lowest,
            at::Tensor& first, at::Tensor& steps, at::Tensor& active, at::Tensor& diverged, at::Tensor& nonfinite,
            at::Tensor& trace, int64_t step, double lam, double beta, double tol, bool relative,
            double divergence_ratio) {
           check_anderson_tracked_step(x, fx, g_history, f_history, gram, previous_x, best, best_pending, lowest, first,
                                       steps, active, diverged, nonfinite, trace, step, lam, beta, tol, relative,
                                       divergence_ratio);
           const AndersonStepParams params = anderson_step_params(x, g_history, step, lam, beta);
           const AndersonTrackerTensors tracker{previous_x.contiguous(), best, best_pending, lowest, first, steps,
                                                active, diverged, nonfinite, trace};
           const TrackerOptions options = tracker_options(tracker, step, tol, relative, divergence_ratio);
           return run(params, x, fx, g_history, f_history, gram, &tracker, options);
         });
}

}  // namespace wtext
