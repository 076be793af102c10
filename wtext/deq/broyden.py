"""Limited-memory Broyden's (good) method on g(z) = f(z) - z, batched, with no host synchronization.

The inverse Jacobian of g is kept as H = -I + U V^T (rank <= memory; when the memory is full, H restarts from -I):
the first step is a plain fixed-point step, and each secant pair (s, y) adds the Sherman-Morrison correction
    u = (s - H y) / (s^T H y),   v = H^T s.
A pair whose denominator vanishes (e.g. a sample that has stopped) adds nothing.
"""

import torch

from .layout import SampleFlattener
from .registry import register_solver
from .tracking import ConvergenceTracker


def _apply(u, v, x, transpose=False):
    """H x (or H^T x) for H = -I + U V^T; u, v: [B, k, d], x: [B, d]."""
    if transpose:
        u, v = v, u
    return -x + torch.einsum("bkd,bk->bd", u, torch.einsum("bkd,bd->bk", v, x))


@register_solver("broyden")
def broyden(f, z0: torch.Tensor, *, max_iter: int, tol: float, stop_mode: str = "rel", record_steps=(),
            divergence_ratio: float = 1e3, check_every: int = 0, memory: int = 30):
    """Limited-memory Broyden with `memory` secant pairs. z0: [B, ...]. check_every=k >= 1 ends the loop early when
    a test every k iterations finds every sample stopped (one host read per test; see
    ConvergenceTracker.all_stopped); 0 runs the whole budget without a host read.
    Returns (lowest-residual iterate per sample, SolverStats)."""
    if not isinstance(memory, int) or memory < 1:
        raise ValueError(f"broyden memory must be an int >= 1; got memory={memory!r}")
    tracker = ConvergenceTracker(z0, max_iter, tol, stop_mode, divergence_ratio, record_steps, check_every)
    batch = z0.shape[0]
    fz0 = f(z0)
    layout = SampleFlattener(fz0)  # iterates take the layout the cell produces
    dtype = torch.float64 if z0.dtype == torch.float64 else torch.float32
    dim = z0[0].numel()
    u = z0.new_zeros((batch, memory, dim), dtype=dtype)
    v = torch.zeros_like(u)
    z = layout.flatten(z0).to(dtype)
    fz = layout.flatten(fz0).to(dtype)
    g = fz - z
    for step in range(max_iter):
        z_state = layout.unflatten(z).to(z0.dtype)
        tracker.update(step, z_state, layout.unflatten(fz).to(z0.dtype))
        # Tested before the next f call: stopped samples keep z (keep_finished below), so z is what every later
        # iteration of a full-budget solve would track and record.
        if step == max_iter - 1 or tracker.all_stopped(step, z_state):
            break
        direction = -_apply(u, v, g)
        z_new = tracker.keep_finished(z, z + direction)
        fz_new = layout.flatten(f(layout.unflatten(z_new).to(z0.dtype))).to(dtype)
        g_new = fz_new - z_new
        s, y = z_new - z, g_new - g
        slot = step % memory
        if slot == 0:
            # A full memory restarts from H = -I. Overwriting the oldest pair instead keeps a rank-deficient
            # mixture of stale secants, which stalls and then blows up on ill-conditioned problems.
            u.zero_()
            v.zero_()
        h_y = _apply(u, v, y)
        h_t_s = _apply(u, v, s, transpose=True)
        denominator = (s * h_y).sum(1, keepdim=True)
        scale = s.norm(dim=1, keepdim=True) * h_y.norm(dim=1, keepdim=True)
        usable = denominator.abs() > 1e-12 * scale
        safe = torch.where(usable, denominator, torch.ones_like(denominator))
        u[:, slot] = torch.where(usable, (s - h_y) / safe, torch.zeros_like(s))
        v[:, slot] = torch.where(usable, h_t_s, torch.zeros_like(s))
        z, fz, g = z_new, fz_new, g_new
    return tracker.finish(step + 1)
