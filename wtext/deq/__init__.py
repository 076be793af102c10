"""Deep-equilibrium baseline: fixed-point solvers, gradients through fixed points (implicit, phantom, 1-step,
reversible), regularizers, the DEQ layer."""

from . import anderson, broyden, fixed_point  # noqa: F401  (register the solvers)
from .backward import implicit, one_step, phantom
from .config import BACKWARD_MODES, COUPLED_MODES, DEQConfig
from .module import DEQ, DEQOutput
from .registry import SOLVERS, get_solver, register_solver
from .regularizers import jacobian_frobenius
from .reversible import ReconstructionStats, ReconstructionWarning, coupled_iteration
from .tracking import SolverStats

__all__ = [
    "BACKWARD_MODES",
    "COUPLED_MODES",
    "DEQ",
    "DEQConfig",
    "DEQOutput",
    "ReconstructionStats",
    "ReconstructionWarning",
    "SOLVERS",
    "SolverStats",
    "coupled_iteration",
    "get_solver",
    "implicit",
    "jacobian_frobenius",
    "one_step",
    "phantom",
    "register_solver",
]
