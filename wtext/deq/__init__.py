"""Deep-equilibrium baseline: fixed-point solvers, gradients through fixed points, regularizers, the DEQ layer."""

from . import anderson, broyden, fixed_point  # noqa: F401  (register the solvers)
from .backward import implicit, one_step, phantom
from .config import BACKWARD_MODES, DEQConfig
from .module import DEQ, DEQOutput
from .registry import SOLVERS, get_solver, register_solver
from .regularizers import jacobian_frobenius
from .tracking import SolverStats

__all__ = [
    "BACKWARD_MODES",
    "DEQ",
    "DEQConfig",
    "DEQOutput",
    "SOLVERS",
    "SolverStats",
    "get_solver",
    "implicit",
    "jacobian_frobenius",
    "one_step",
    "phantom",
    "register_solver",
]
