// One Anderson-acceleration step, the per-iteration work of wtext's DEQ solver, as an op with CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include "anderson/anderson_track.h"

namespace wtext {

// What the kernels of one step need; filled by check_anderson_step.
struct AndersonStepParams {
  int64_t batch = 0;
  int64_t dim = 0;     // flattened state size per sample
  int64_t window = 0;  // m: history slots
  int64_t slot = 0;    // where the newest (x, f(x)) goes: step % m
  int64_t valid = 0;   // slots holding history after this step: min(step + 1, m)
  double lam = 1e-4;
  double beta = 1.0;
};

// Validates shapes, dtypes and devices (errors name the argument and the value) and returns the step's params.
AndersonStepParams check_anderson_step(const at::Tensor& x, const at::Tensor& fx, const at::Tensor& g_history,
                                       const at::Tensor& f_history, const at::Tensor& gram, int64_t step, double lam,
                                       double beta);

// The tracker tensors of anderson_tracked_step (see anderson_track.h), in the order of the schema.
struct AndersonTrackerTensors {
  at::Tensor best, lowest, first, steps, active, diverged, nonfinite, trace;
};

// Checks the tracker tensors and options against x (errors name the argument) and returns the step's options.
TrackerOptions check_anderson_tracker(const at::Tensor& x, const AndersonTrackerTensors& tracker, int64_t step,
                                      double tol, bool relative, double divergence_ratio);

}  // namespace wtext
