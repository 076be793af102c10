"""The reversible DEQ (RevDEQ, McCallum et al. 2025): a coupled fixed-point iteration whose steps can be undone, so
its exact gradient is computed in memory that does not grow with the number of steps.

Forward, from y_0 = z_0:
    y_{n+1} = (1 - beta) y_n + beta f(z_n)
    z_{n+1} = (1 - beta) z_n + beta f(y_{n+1})
Only the last (y, z) is kept. Backward walks the steps in reverse, undoing each half-step algebraically,
    z_n = (z_{n+1} - beta f(y_{n+1})) / (1 - beta),    y_n = (y_{n+1} - beta f(z_n)) / (1 - beta),
and back-propagates through the same f evaluation with one vector-Jacobian product per half-step.

Undoing a step divides by (1 - beta), so rounding errors made in the forward iteration grow by about 1 / (1 - beta)
per half-step on the way back. Two things keep them small: the iterate is kept in float64 (state_dtype) while f
runs in the model's dtype, and f sees exactly the values it saw in the forward pass as long as the float64
reconstruction rounds to the same model-dtype numbers. What is left is measured, not assumed: the walk ends at a
reconstructed (y_0, z_0), which is compared with the true initial state; that relative reconstruction error is
returned per sample, and a backward pass whose error exceeds the bound warns (docs/deq.md gives the measured
errors by beta, step count and dtype).
"""

import warnings
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from .backward import autocast_like, autocast_state
from .tracking import ConvergenceTracker, per_sample_norm

STATE_DTYPES = {"float64": torch.float64, "float32": torch.float32}
# How many reconstruction warnings a process prints before it only counts them (the statistic stays in every
# ReconstructionStats and in a training run's metrics).
WARNINGS_SHOWN = 3


class ReconstructionWarning(UserWarning):
    """A reversible backward pass reconstructed its initial state worse than its bound: the gradient is inexact."""


@dataclass
class ReconstructionStats:
    """What a reversible backward pass measured. error: [B] the relative error of the reconstructed initial state,
    max(|y_0' - z_0|, |z_0' - z_0|) / |z_N| per sample (0 for a perfect reconstruction); bound: the error above which
    it warned; steps: the coupled steps it undid."""

    error: torch.Tensor
    bound: float
    steps: int


def coupled_step(f, y: torch.Tensor, z: torch.Tensor, beta: float, compute_dtype: torch.dtype):
    """One forward step from (y_n, z_n) in the state dtype: (y_{n+1}, z_{n+1}, f(z_n)). f runs on the states cast
    to compute_dtype; the mixing runs in the state dtype as (1 - beta) a + beta f, the form the reverse step undoes."""
    fz = f(z.to(compute_dtype))
    y = torch.add(y * (1 - beta), fz.to(y.dtype), alpha=beta)
    fy = f(y.to(compute_dtype))
    z = torch.add(z * (1 - beta), fy.to(z.dtype), alpha=beta)
    return y, z, fz


# Eager even inside torch.compile, as is reversible(): the reverse walk re-runs f eagerly, and only the same code on the
# same inputs gives the same values; a compiled forward (fused kernels, other rounding) was measured to reconstruct
# its initial state with error 0.95 instead of 0.
@torch.compiler.disable
def coupled_iteration(f, z0: torch.Tensor, *, beta: float, max_iter: int, tol: float, stop_mode: str = "rel",
                      record_steps=(), divergence_ratio: float = 1e3, check_every: int = 0,
                      state_dtype: torch.dtype = torch.float64):
    """Runs the coupled iteration from y_0 = z_0 = z0 for max_iter steps, or fewer when check_every=k >= 1 finds,
    every k steps (one host read), that every sample's residual |f(z_n) - z_n| is under tol. Every sample runs the
    same number of steps: the reverse walk undoes them all. Differentiable as written (the unrolled gradient) when
    called with grad enabled.

    z0: [B, ...] in the model's dtype; the iterate is kept in the wider of state_dtype and z0's dtype.
    Returns (y_N, z_N) in that dtype and the SolverStats of the z iterates (steps: per sample, the step at which it
    met tol; iterations: N)."""
    tracker = ConvergenceTracker(z0, max_iter, tol, stop_mode, divergence_ratio, record_steps, check_every)
    state_dtype = torch.promote_types(state_dtype, z0.dtype)
    y = z = z0.to(state_dtype)
    for step in range(max_iter):
        y, z_next, fz = coupled_step(f, y, z, beta, z0.dtype)
        tracker.update(step, z.detach().to(z0.dtype), fz.detach())  # statistics only: no graph
        z = z_next
        if tracker.all_stopped(step, z.detach().to(z0.dtype)):
            break
    _, stats = tracker.finish(step + 1)
    return y, z, stats


def read_tensors(output: torch.Tensor, state: torch.Tensor, tensors) -> list[bool]:
    """Which of `tensors` the graph of `output` (f evaluated on `state`, which requires grad) reads directly, not
    through another of them: those the reverse steps differentiate (the others get their gradient through the ones
    made from them, e.g. a weight through its masked views). Raises if the graph reaches a tensor needing a gradient
    that is neither `state` nor one of `tensors`: the reversible backward would silently give it no gradient."""
    leaves = {id(state): None}
    edges = {}
    for i, tensor in enumerate(tensors):
        if tensor.grad_fn is None:
            leaves[id(tensor)] = i
        else:
            edges[(tensor.grad_fn, tensor.output_nr)] = i
    read = [False] * len(tensors)
    seen, pending = set(), list(output.grad_fn.next_functions) if output.grad_fn is not None else []
    while pending:
        node, index = pending.pop()
        if node is None:
            continue
        if (node, index) in edges:
            read[edges[(node, index)]] = True
            continue
        if node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: the edge to a leaf tensor
        if variable is not None:
            if id(variable) not in leaves:
                raise ValueError(
                    f"the DEQ cell reads a tensor that needs a gradient (shape {tuple(variable.shape)}) which was not "
                    f"passed to the DEQ layer: the reversible backward would give it no gradient. Pass it in "
                    f"inputs= (DEQ.forward), or make the cell an nn.Module that owns it as a parameter")
            if leaves[id(variable)] is not None:
                read[leaves[id(variable)]] = True
            continue
        pending.extend(node.next_functions)
    return read


class ReversibleGradient(torch.autograd.Function):
    """Identity on z_N in forward (cast to the model's dtype); backward undoes the coupled steps one by one and
    returns the exact gradient of the iteration with respect to `tensors` (x, the cell's parameters and anything
    else f reads)."""

    @staticmethod
    def forward(ctx, y_last, z_last, z_first, f, beta, steps, bound, sink, *tensors):
        ctx.save_for_backward(y_last, z_last, z_first)
        ctx.f, ctx.beta, ctx.steps, ctx.bound, ctx.sink = f, beta, steps, bound, sink
        ctx.autocast = autocast_state(z_first.device.type)  # f re-runs in backward as it ran here (see implicit)
        ctx.tensors = tensors  # kept by reference, as f's closure keeps them anyway
        return z_last.to(z_first.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        y, z, z_first = ctx.saved_tensors
        beta, f, compute_dtype = ctx.beta, ctx.f, z_first.dtype
        grad_y, grad_z = torch.zeros_like(y), grad.to(z.dtype)
        z_last = z
        wanted: list[torch.Tensor] | None = None  # the tensors to differentiate, found at the first evaluation
        totals: list[torch.Tensor | None] = []

        def pull_back(state, vector):
            """(f(state) in the state dtype, the vjp with respect to state); adds the tensors' parts to totals."""
            nonlocal wanted, totals
            with torch.enable_grad(), autocast_like(ctx.autocast):
                point = state.to(compute_dtype).detach().requires_grad_()
                image = f(point)
            if wanted is None:
                read = read_tensors(image, point, ctx.tensors)
                wanted = [i for i, needs in enumerate(ctx.needs_input_grad[8:]) if needs and read[i]]
                totals = [None] * len(wanted)
            parts = torch.autograd.grad(image, [point, *(ctx.tensors[i] for i in wanted)],
                                        (beta * vector).to(image.dtype), allow_unused=True)
            for k, part in enumerate(parts[1:]):
                if part is not None:
                    totals[k] = part if totals[k] is None else totals[k] + part
            return image.detach().to(state.dtype), parts[0].to(state.dtype)

        for _ in range(ctx.steps):
            # Undo z_{n+1} = (1 - beta) z_n + beta f(y_{n+1}); y_{n+1} gets beta J(y_{n+1})^T grad_z.
            image, vjp = pull_back(y, grad_z)
            z = (z - beta * image) / (1 - beta)
            grad_y = grad_y + vjp
            # Undo y_{n+1} = (1 - beta) y_n + beta f(z_n); z_n gets beta J(z_n)^T grad_y.
            image, vjp = pull_back(z, grad_y)
            y = (y - beta * image) / (1 - beta)
            grad_z = (1 - beta) * grad_z + vjp
            grad_y = (1 - beta) * grad_y

        start = z_first.to(z.dtype)
        scale = per_sample_norm(z_last).clamp_min(1e-30)
        error = torch.maximum(per_sample_norm(y - start), per_sample_norm(z - start)) / scale
        ctx.sink.append(ReconstructionStats(error=error, bound=ctx.bound, steps=ctx.steps))
        warn_if_inexact(error, ctx.bound, ctx.steps, beta)
        tensor_grads = [None] * len(ctx.tensors)
        for k, i in enumerate(wanted or ()):
            tensor_grads[i] = totals[k]
        return (None,) * 8 + tuple(tensor_grads)


_warnings_given = 0


def warn_if_inexact(error: torch.Tensor, bound: float, steps: int, beta: float) -> None:
    """Warns when a sample's reconstruction error exceeds the bound (one host read per backward pass: a wrong
    gradient must not pass silently)."""
    global _warnings_given
    worst = float(error.max())
    if not worst > bound:  # also catches NaN
        return
    _warnings_given += 1
    if _warnings_given > WARNINGS_SHOWN:
        return
    more = " (further such warnings in this process are not shown)" if _warnings_given == WARNINGS_SHOWN else ""
    warnings.warn(
        f"reversible DEQ: the backward pass reconstructed the initial state with relative error {worst:.2e} > bound "
        f"{bound:.0e} after undoing {steps} steps at rev_beta={beta}: this gradient is not exact. Lower rev_beta or "
        f"f_max_iter, keep the state in float64 (rev_state_dtype), or use backward='unrolled'{more}",
        ReconstructionWarning, stacklevel=2)


@torch.compiler.disable
def reversible(f, y_last: torch.Tensor, z_last: torch.Tensor, z_first: torch.Tensor, *, beta: float, steps: int,
               bound: float, tensors, sink: list) -> torch.Tensor:
    """z_N in z_first's dtype, attached to the graph of `tensors` with the reversible gradient of `steps` coupled
    steps; each backward pass appends its ReconstructionStats to sink."""
    return ReversibleGradient.apply(y_last.detach(), z_last.detach(), z_first.detach(), f, beta, steps, bound, sink,
                                    *tensors)
