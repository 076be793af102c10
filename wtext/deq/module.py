"""DEQ: a layer that returns the fixed point z* = cell(z*, x) of any cell, with a choice of solvers and gradients."""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import backward as gradients
from .config import COUPLED_MODES, DEQConfig
from .regularizers import jacobian_frobenius
from .registry import get_solver
from .reversible import STATE_DTYPES, ReconstructionStats, coupled_iteration, reversible
from .tracking import SolverStats


# Eager even inside torch.compile: the estimate's autograd.grad(create_graph=True) is differentiated again by the
# loss, and a compiled (AOT autograd) region has no double backward; compiled, the step failed in backward.
@torch.compiler.disable
def jacobian_estimate(f, z_star: torch.Tensor, vectors: int) -> torch.Tensor:
    """The Hutchinson ||df/dz||_F^2 estimate at z_star, differentiable with respect to f's parameters."""
    z_probe = z_star.detach().requires_grad_()
    # Fused attention kernels have no double backward: attention inside the cell runs its plain math form here.
    with sdpa_kernel(SDPBackend.MATH):
        return jacobian_frobenius(f(z_probe), z_probe, vectors)


@dataclass
class DEQOutput:
    """z: the fixed point (with the configured gradient); stats: the forward solve's statistics;
    jacobian_loss: the Hutchinson ||J||_F^2 estimate (0 unless jac_reg_weight > 0 and training; multiply by the
    weight yourself or use `regularization`); correction_states: iterates of the forward solve with a phantom
    gradient, earliest first (empty unless correction_points > 0); backward_stats: filled with the adjoint solve's
    SolverStats when backward runs (implicit mode); reconstruction: filled with the ReconstructionStats of each
    reversible backward pass."""

    z: torch.Tensor
    stats: SolverStats
    jacobian_loss: torch.Tensor
    regularization: torch.Tensor
    correction_states: list[torch.Tensor] = field(default_factory=list)
    backward_stats: list[SolverStats] = field(default_factory=list)
    reconstruction: list[ReconstructionStats] = field(default_factory=list)


class DEQ(nn.Module):
    """Wraps a cell f(z, x) -> z' (an nn.Module or any callable) into a deep-equilibrium layer.

    forward(x, z0=None): z0 defaults to cell.initial_state(x) when the cell has one, else zeros shaped like x.
    The reversible backward differentiates each step with respect to x, the cell's parameters (when the cell is an
    nn.Module) and `inputs`, the other tensors the cell reads (e.g. weights it closes over); a cell that reads a
    tensor needing a gradient that is none of these is an error there, not a silently missing gradient.
    """

    def __init__(self, cell, config: DEQConfig | None = None):
        super().__init__()
        self.cell = cell
        self.config = config or DEQConfig()

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.cell, "initial_state"):
            return self.cell.initial_state(x)
        return torch.zeros_like(x)

    def forward(self, x: torch.Tensor, z0: torch.Tensor | None = None, record_steps=None, inputs=()) -> DEQOutput:
        """record_steps: solver steps whose iterates to keep in out.stats.recorded (default: those of the
        fixed-point correction loss when training); inputs: tensors besides x and the cell's parameters that the
        cell reads (the reversible backward needs them named)."""
        config = self.config
        if config.backward in COUPLED_MODES:
            return self._coupled(x, z0, record_steps, inputs)

        def f(z):
            return self.cell(z, x)

        z0 = self.initial_state(x) if z0 is None else z0
        if record_steps is None:
            record_steps = self._correction_steps() if self.training else ()
        with torch.no_grad():
            z_star, stats = get_solver(config.f_solver)(
                f, z0.detach(), max_iter=config.f_max_iter, tol=config.f_tol, stop_mode=config.f_stop_mode,
                record_steps=record_steps, check_every=config.f_check_every, **config.solver_options(config.f_solver),
            )
        backward_stats: list[SolverStats] = []
        if not torch.is_grad_enabled():
            z = z_star
        elif config.backward == "implicit":
            options = dict(max_iter=config.b_max_iter, tol=config.b_tol, stop_mode=config.b_stop_mode,
                           check_every=config.b_check_every, **config.solver_options(config.b_solver))
            z = gradients.implicit(f, z_star, config.b_solver, options, backward_stats)
        elif config.backward == "phantom":
            z = gradients.phantom(f, z_star, config.phantom_steps, config.phantom_tau)
        else:
            z = gradients.one_step(f, z_star)

        return self._output(f, z, z_star, stats, backward_stats=backward_stats)

    def _coupled(self, x, z0, record_steps, inputs) -> DEQOutput:
        """The reversible and unrolled modes: the coupled iteration, its gradient by undoing the steps or by
        back-propagating through them."""
        config = self.config

        def f(z):
            return self.cell(z, x)

        z0 = (self.initial_state(x) if z0 is None else z0).detach()
        if record_steps is None:
            record_steps = self._correction_steps() if self.training else ()
        options = dict(beta=config.rev_beta, max_iter=config.f_max_iter, tol=config.f_tol,
                       stop_mode=config.f_stop_mode, record_steps=record_steps, check_every=config.f_check_every,
                       divergence_ratio=config.divergence_ratio, state_dtype=STATE_DTYPES[config.rev_state_dtype])
        unrolled = config.backward == "unrolled" and torch.is_grad_enabled()
        with torch.set_grad_enabled(unrolled):
            y_last, z_last, stats = coupled_iteration(f, z0, **options)
        reconstruction: list[ReconstructionStats] = []
        if unrolled or not torch.is_grad_enabled():
            z = z_last.to(z0.dtype)
        else:
            tensors = {id(t): t for t in (x, *inputs, *self._cell_parameters())}
            z = reversible(f, y_last, z_last, z0, beta=config.rev_beta, steps=stats.iterations,
                           bound=config.rev_error_bound, tensors=list(tensors.values()), sink=reconstruction)
        return self._output(f, z, z.detach(), stats, reconstruction=reconstruction)

    def _cell_parameters(self) -> list[torch.Tensor]:
        return list(self.cell.parameters()) if isinstance(self.cell, nn.Module) else []

    def _output(self, f, z, z_star, stats, **gradient_stats) -> DEQOutput:
        """The DEQOutput of a solve: the regularizers at the fixed point z_star, the correction states."""
        config = self.config
        jacobian_loss = z_star.new_zeros((), dtype=torch.float32)
        if self.training and config.jac_reg_weight > 0 and torch.is_grad_enabled():
            jacobian_loss = jacobian_estimate(f, z_star, config.jac_reg_vectors)
        correction_states = [
            gradients.phantom(f, stats.recorded[step], 1, config.phantom_tau) for step in self._correction_steps()
            if step in stats.recorded
        ] if torch.is_grad_enabled() and self.training else []
        return DEQOutput(z=z, stats=stats, jacobian_loss=jacobian_loss,
                         regularization=config.jac_reg_weight * jacobian_loss,
                         correction_states=correction_states, **gradient_stats)

    def _correction_steps(self) -> tuple[int, ...]:
        """Evenly spaced solver steps (before the last) whose iterates feed the fixed-point correction loss."""
        points = self.config.correction_points
        if points == 0:
            return ()
        steps = np.linspace(0, self.config.f_max_iter - 1, points + 1)[:-1]
        return tuple(sorted({int(round(step)) for step in steps}))
