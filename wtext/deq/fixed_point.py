"""Plain (optionally damped) fixed-point iteration: z <- (1 - damping) z + damping f(z)."""

import torch

from .registry import register_solver
from .tracking import ConvergenceTracker


@register_solver("fixed_point_iter")
def fixed_point_iter(f, z0: torch.Tensor, *, max_iter: int, tol: float, stop_mode: str = "rel", record_steps=(),
                     divergence_ratio: float = 1e3, check_every: int = 0, damping: float = 1.0):
    """Iterates z <- (1 - damping) z + damping f(z) for max_iter steps; samples stop once their residual <= tol.
    check_every=k >= 1 ends the loop early when a test every k iterations finds every sample stopped (one host
    read per test; see ConvergenceTracker.all_stopped); 0 runs the whole budget without a host read.

    z0: [B, ...]. Returns (lowest-residual iterate per sample, SolverStats).
    """
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1]; got damping={damping!r}")
    tracker = ConvergenceTracker(z0, max_iter, tol, stop_mode, divergence_ratio, record_steps, check_every)
    z = z0
    for step in range(max_iter):
        fz = f(z)
        tracker.update(step, z, fz)
        z = tracker.keep_finished(z, torch.lerp(z, fz, damping) if damping < 1 else fz)
        if tracker.all_stopped(step, z):
            break
    return tracker.finish(step + 1)
