"""Anderson acceleration, with its per-iteration work (Gram update, small solve, mixing) in wtext's kernels."""

import torch

import wtext.ops  # noqa: F401  (registers torch.ops.wtext.anderson_tracked_step and the other ops)

from .layout import SampleFlattener
from .registry import register_solver
from .tracking import ConvergenceTracker

MAX_WINDOW = 16


def check_anderson_options(m: int, lam: float, beta: float) -> None:
    if not isinstance(m, int) or not 1 <= m <= MAX_WINDOW:
        raise ValueError(f"anderson window m must be an int in [1, {MAX_WINDOW}]; got m={m!r}")
    if not lam >= 0:
        raise ValueError(f"anderson regularization lam must be >= 0; got lam={lam!r}")
    if not 0 < beta <= 1:
        raise ValueError(f"anderson damping beta must be in (0, 1]; got beta={beta!r}")


@register_solver("anderson")
def anderson(f, z0: torch.Tensor, *, max_iter: int, tol: float, stop_mode: str = "rel", record_steps=(),
             divergence_ratio: float = 1e3, check_every: int = 0, m: int = 5, lam: float = 1e-4,
             beta: float = 1.0):
    """Anderson acceleration with window m, Tikhonov regularization lam (relative to the residual scale) and
    damping beta. z0: [B, ...]; the solve runs in float32 (float64 if z0 is float64).

    A singular or ill-conditioned least-squares system falls back to a plain step inside the kernel, never NaN; a
    window slot holding a non-finite residual (from a step whose f(z) was NaN or overflowed) is left out of the mix
    until it is overwritten, so it cannot turn later finite steps into NaN.
    Each iteration is one call of f and one anderson_tracked_step: the Gram update, the convergence tracking of
    ConvergenceTracker (residuals, stop masks, lowest-residual iterate, statistics) and the mix run in that op's
    kernels, with the residual norms taken from data the Gram update reads anyway.
    check_every=k >= 1 ends the loop early when a test every k iterations finds every sample stopped (one host
    read per test; see ConvergenceTracker.all_stopped); 0 runs the whole budget without a host read.
    Returns (lowest-residual iterate per sample, SolverStats).
    """
    check_anderson_options(m, lam, beta)
    tracker = ConvergenceTracker(z0, max_iter, tol, stop_mode, divergence_ratio, record_steps, check_every)
    batch = z0.shape[0]
    solve_dtype = torch.float64 if z0.dtype == torch.float64 else torch.float32
    # Ring buffers of residuals f(z) - z and images f(z). Left uninitialized: the op reads only slots it has written
    # (zero-filling them cost two writes of m states per solve).
    g_history = z0.new_empty((batch, m, z0[0].numel()), dtype=solve_dtype)
    f_history = torch.empty_like(g_history)
    gram = z0.new_zeros((batch, m, m), dtype=solve_dtype)
    # The op keeps the best iterate lazily: an improving sample's iterate is only marked (best_pending) and copied
    # into `best` when a later step fails to improve on it, from the previous iterate passed back in.
    best_pending = torch.zeros(batch, dtype=torch.bool, device=z0.device)
    layout = best = x_previous = None
    z = z0
    for step in range(max_iter):
        fz = f(z)
        if layout is None:
            layout = SampleFlattener(fz)  # iterates take the layout the cell produces
            # The op keeps the best iterate here, flattened: the tracker's own copy of z0 where it can be viewed so.
            best = layout.flatten(tracker.best).to(solve_dtype)
        tracker.record(step, z)
        x = layout.flatten(z).to(solve_dtype)
        z_next = torch.ops.wtext.anderson_tracked_step(
            x, layout.flatten(fz).to(solve_dtype), g_history, f_history, gram,
            x if x_previous is None else x_previous, best, best_pending, *tracker.fused_state(), step, lam, beta, tol,
            stop_mode == "rel", divergence_ratio,
        )
        x_previous = x
        z = layout.unflatten(z_next).to(z0.dtype)
        if tracker.all_stopped(step, z):
            # A full-budget solve would next copy x_previous into best where best_pending is set (a stopped
            # sample does not improve); resolving the mark below from the same x_previous gives the same best.
            break
    best = torch.where(best_pending[:, None], x_previous, best)  # the last iterate where it is still the best
    tracker.best = layout.unflatten(best).to(z0.dtype)
    return tracker.finish(step + 1)
