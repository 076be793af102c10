"""Gradients through a fixed point z* = f(z*, x): implicit differentiation, phantom gradient, 1-step gradient.

All three take the fixed point found without a graph and return a tensor equal to it (implicit) or to a few
steps from it (phantom), attached to the graph of f's parameters and of x.
"""

import contextlib

import torch

from .registry import get_solver


def autocast_state(device_type: str):
    """(device_type, dtype) of the autocast region we are in, or None outside one."""
    if torch.is_autocast_enabled(device_type):
        return device_type, torch.get_autocast_dtype(device_type)
    return None


def autocast_like(state):
    """Re-enters the autocast region recorded by autocast_state (a no-op for None)."""
    return torch.autocast(state[0], dtype=state[1]) if state is not None else contextlib.nullcontext()


class ImplicitGradient(torch.autograd.Function):
    """Identity in forward; in backward, replaces the incoming gradient g by the solution y of the adjoint fixed
    point y = J^T y + g (J = df/dz at z*), so that backpropagating y through one application of f yields
    dL/dtheta = y^T df/dtheta = g^T (I - J)^-1 df/dtheta, the implicit-function-theorem gradient."""

    @staticmethod
    def forward(ctx, z_out, z_star, f, solve, solve_options, stats_sink):
        ctx.save_for_backward(z_star)
        ctx.f, ctx.solve, ctx.solve_options, ctx.stats_sink = f, solve, solve_options, stats_sink
        # backward() usually runs after the autocast region has closed, but f must be re-run as in forward: its
        # captured weights may be in the autocast dtype, which mixed with float32 activations is an error.
        ctx.autocast = autocast_state(z_star.device.type)
        return z_out.clone()

    @staticmethod
    def backward(ctx, grad):
        (z_star,) = ctx.saved_tensors
        with torch.enable_grad(), autocast_like(ctx.autocast):
            z = z_star.detach().requires_grad_()
            fz = ctx.f(z)

        def adjoint_map(y):
            (vjp,) = torch.autograd.grad(fz, z, y, retain_graph=True)
            return vjp + grad

        with torch.no_grad():
            y, stats = ctx.solve(adjoint_map, grad, **ctx.solve_options)
        ctx.stats_sink.append(stats)
        return y, None, None, None, None, None


def implicit(f, z_star: torch.Tensor, solver: str, solve_options: dict, stats_sink: list) -> torch.Tensor:
    """z* attached to the graph with the implicit gradient; f: z -> f(z, x) closing over x and the parameters.
    The adjoint solve's SolverStats are appended to stats_sink when backward runs."""
    z_star = z_star.detach()
    z_out = f(z_star)  # one application of f carries the graph to the parameters and to x
    return ImplicitGradient.apply(z_out, z_star, f, get_solver(solver), solve_options, stats_sink)


def phantom(f, z_star: torch.Tensor, steps: int, tau: float) -> torch.Tensor:
    """`steps` damped steps z <- (1 - tau) z + tau f(z) from the detached fixed point, with the graph kept."""
    z = z_star.detach()
    for _ in range(steps):
        z = torch.lerp(z, f(z), tau) if tau < 1 else f(z)
    return z


def one_step(f, z_star: torch.Tensor) -> torch.Tensor:
    """The Jacobian-free gradient: f(z*) with z* detached (phantom gradient with one undamped step)."""
    return f(z_star.detach())
