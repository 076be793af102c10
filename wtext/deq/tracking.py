"""Per-sample convergence tracking shared by all solvers, entirely on the device.

By default nothing here reads a value back to the host: stopping is a per-sample `active` mask, finished samples
stop changing (torch.where), and the loop runs its full budget. That keeps the solve free of host synchronizations
and lets a fixed-budget solve be captured in a CUDA graph. A solve given check_every=k >= 1 trades that for time:
after every k-th iteration it reads `active.any()` to the host once and ends the loop when no sample is still
iterating (ConvergenceTracker.all_stopped); since stopped samples no longer change, the result is the same.
"""

from dataclasses import dataclass, field

import torch

STOP_MODES = ("abs", "rel")


@dataclass
class SolverStats:
    """What a solve did, per sample (tensors on the solve's device; read them after the solve, not inside it).

    steps:       [B] int   iterations until the sample stopped (converged, diverged, or the budget ran out)
    trace:       [B, max_iter] residual of every iterate (NaN after the sample stopped)
    lowest:      [B] lowest residual seen; the returned iterate is the one that had it
    converged:   [B] bool  lowest <= tol
    diverged:    [B] bool  the residual became non-finite or grew past divergence_ratio x the first residual
    nonfinite:   [B] bool  a non-finite residual was seen (NaN/inf in the input or in f)
    recorded:    {step: [B, ...]} iterates recorded at the requested steps (for fixed-point correction losses)
    iterations:  int, loop iterations the solve ran (calls of f): max_iter, or fewer when check_every ended the solve
                 (a host number, known without reading the device)
    """

    steps: torch.Tensor
    trace: torch.Tensor
    lowest: torch.Tensor
    converged: torch.Tensor
    diverged: torch.Tensor
    nonfinite: torch.Tensor
    tol: float
    stop_mode: str
    recorded: dict[int, torch.Tensor] = field(default_factory=dict)
    iterations: int = 0

    def summary(self) -> dict[str, float]:
        """Batch means as Python numbers (this synchronizes: call it after the solve, for logging)."""
        return {
            "steps": self.steps.float().mean().item(),
            "lowest_residual": self.lowest.float().mean().item(),
            "converged": self.converged.float().mean().item(),
            "diverged": self.diverged.float().mean().item(),
            "nonfinite": self.nonfinite.float().mean().item(),
        }


def per_sample_norm(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm over all but the batch dimension, in at least float32."""
    return tensor.flatten(1).to(torch.promote_types(tensor.dtype, torch.float32)).norm(dim=1)


def check_check_every(check_every: int, name: str = "check_every") -> None:
    """check_every: 0 (never read the device inside the solve) or k >= 1 (test for an early end every k iterations)."""
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
        raise ValueError(f"{name} must be an int >= 0 (0: never check, run the whole budget; k: test every k "
                         f"iterations whether every sample stopped); got {name}={check_every!r}")


def check_budget(max_iter: int, tol: float, stop_mode: str) -> None:
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1; got max_iter={max_iter!r}")
    if not (tol > 0):
        raise ValueError(f"tol must be > 0; got tol={tol!r}")
    if stop_mode not in STOP_MODES:
        raise ValueError(f"stop_mode must be one of {STOP_MODES}; got stop_mode={stop_mode!r}")


class ConvergenceTracker:
    """Follows a batch of iterates: residuals, best iterate, stop masks, statistics."""

    def __init__(self, z0: torch.Tensor, max_iter: int, tol: float, stop_mode: str, divergence_ratio: float = 1e3,
                 record_steps=(), check_every: int = 0):
        check_budget(max_iter, tol, stop_mode)
        check_check_every(check_every)
        if not divergence_ratio > 1:
            raise ValueError(f"divergence_ratio must be > 1; got divergence_ratio={divergence_ratio!r}")
        batch = z0.shape[0]
        device = z0.device
        real = torch.promote_types(z0.dtype, torch.float32)
        self.tol, self.stop_mode, self.divergence_ratio = tol, stop_mode, divergence_ratio
        self.max_iter, self.check_every = max_iter, check_every
        self.record_steps = set(record_steps)
        self.best = z0.clone()
        self.lowest = torch.full((batch,), float("inf"), device=device, dtype=real)
        self.first = torch.zeros(batch, device=device, dtype=real)  # set at step 0
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.diverged = torch.zeros(batch, dtype=torch.bool, device=device)
        self.nonfinite = torch.zeros(batch, dtype=torch.bool, device=device)
        self.steps = torch.zeros(batch, dtype=torch.long, device=device)
        self.trace = torch.full((batch, max_iter), float("nan"), device=device, dtype=real)
        self.recorded: dict[int, torch.Tensor] = {}

    def residual(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        residual = per_sample_norm(fz - z)
        if self.stop_mode == "rel":
            residual = residual / (per_sample_norm(fz) + 1e-8)
        return residual

    def update(self, step: int, z: torch.Tensor, fz: torch.Tensor) -> None:
        """Records the residual of iterate z (whose image is fz) at `step` and updates the stop masks."""
        residual = self.residual(z, fz)
        finite = torch.isfinite(residual)
        if step == 0:
            self.first = torch.where(finite, residual, torch.zeros_like(residual))
        active = self.active
        self.trace[:, step] = torch.where(active, residual, torch.full_like(residual, float("nan")))
        improved = active & finite & (residual < self.lowest)
        self.lowest = torch.where(improved, residual, self.lowest)
        self.best = torch.where(self._expand(improved, z), z, self.best)
        self.steps = torch.where(active, torch.full_like(self.steps, step + 1), self.steps)
        self.nonfinite |= active & ~finite
        exploded = active & (~finite | (residual > self.divergence_ratio * self.first.clamp_min(1e-30)))
        self.diverged |= exploded
        self.active = active & ~exploded & ~(residual <= self.tol)
        self.record(step, z)

    def record(self, step: int, z: torch.Tensor) -> None:
        """Keeps a copy of iterate z if `step` is one of the requested record steps."""
        if step in self.record_steps:
            self.recorded[step] = z.clone()

    def keep_finished(self, z_old: torch.Tensor, z_new: torch.Tensor) -> torch.Tensor:
        """Samples that stopped keep their iterate; the others move on."""
        return torch.where(self._expand(self.active, z_new), z_new, z_old)

    def all_stopped(self, step: int, z: torch.Tensor) -> bool:
        """Whether the solve may end after iteration `step` (0-based) because no sample is still active.

        Reads the device (one synchronization) only after every check_every-th iteration, and never with
        check_every=0 or after the last iteration (the loop ends there anyway). z: [B, ...] the iterate every sample
        holds after this iteration, which a full-budget solve would keep until the end: it is recorded for the
        record steps the loop will no longer reach, so stats.recorded matches the full-budget solve's.
        """
        every = self.check_every
        if not every or (step + 1) % every or step + 1 >= self.max_iter:
            return False
        if bool(self.active.any()):
            return False
        for later in range(step + 1, self.max_iter):
            self.record(later, z)
        return True

    def fused_state(self) -> tuple[torch.Tensor, ...]:
        """The tensors a solver kernel with fused tracking updates in place (see anderson_tracked_step), after
        previous_x, best and best_pending: (lowest, first, steps, active, diverged, nonfinite, trace)."""
        return self.lowest, self.first, self.steps, self.active, self.diverged, self.nonfinite, self.trace

    def finish(self, iterations: int | None = None) -> tuple[torch.Tensor, SolverStats]:
        """(best iterate [B, ...], SolverStats); iterations: the loop iterations the solve ran (default max_iter)."""
        stats = SolverStats(
            steps=self.steps, trace=self.trace, lowest=self.lowest, converged=self.lowest <= self.tol,
            diverged=self.diverged, nonfinite=self.nonfinite, tol=self.tol, stop_mode=self.stop_mode,
            recorded=self.recorded, iterations=self.max_iter if iterations is None else iterations,
        )
        return self.best, stats

    @staticmethod
    def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return mask.view(-1, *([1] * (like.dim() - 1)))
