"""DEQConfig: every option of a deep-equilibrium layer, with defaults in the spirit of torchdeq and MDEQ."""

from dataclasses import dataclass, fields

from wtext.validation import require_ints

from .anderson import check_anderson_options
from .registry import get_solver
from .reversible import STATE_DTYPES
from .tracking import STOP_MODES, check_check_every

BACKWARD_MODES = ("implicit", "phantom", "one_step", "reversible", "unrolled")
# Backward modes whose forward pass is the coupled iteration of wtext.deq.reversible, not f_solver.
COUPLED_MODES = ("reversible", "unrolled")
# Options the coupled iteration does not read: set away from their defaults with a coupled mode, they are errors.
SOLVER_ONLY_OPTIONS = ("f_solver", "b_solver", "b_max_iter", "b_tol", "b_stop_mode", "b_check_every", "phantom_steps",
                       "phantom_tau", "anderson_m", "anderson_lam", "anderson_beta", "broyden_memory")
COUPLED_ONLY_OPTIONS = ("rev_beta", "rev_state_dtype", "rev_error_bound")


@dataclass(frozen=True)
class DEQConfig:
    """Options of a DEQ layer. Frozen: a config is never mutated after it is made (use dataclasses.replace).

    Forward solve:  f_solver, f_max_iter, f_tol, f_stop_mode
    Backward:       backward = "implicit" (adjoint fixed point solved with b_solver, b_max_iter, b_tol),
                    "phantom" (phantom_steps unrolled damped steps z <- (1-tau) z + tau f(z) from the fixed point),
                    "one_step" (the Jacobian-free gradient: one undamped step),
                    "reversible" (RevDEQ: the forward pass is the coupled iteration y <- (1-b) y + b f(z),
                    z <- (1-b) z + b f(y) with b = rev_beta for f_max_iter steps; backward undoes the steps and gives
                    the iteration's exact gradient in memory flat in the step count, within rev_error_bound, the
                    relative error of the reconstructed initial state; the iterate is kept in rev_state_dtype),
                    "unrolled" (the same coupled iteration, back-propagated through its stored graph: exact, memory
                    growing with the steps; the reference of the reversible gradient)
    Solver knobs:   anderson_m, anderson_lam, anderson_beta; broyden_memory; divergence_ratio
    Early end:      f_check_every / b_check_every: 0 (default) runs every solve's whole budget with no host read
                    (CUDA-graph capturable); k >= 1 tests every k iterations, with one host read, whether every
                    sample stopped, and ends the forward / adjoint solve then (same result, fewer iterations)
    Regularizers:   jac_reg_weight (Hutchinson estimate of ||df/dz||_F^2 at the fixed point, jac_reg_vectors probes),
                    correction_points (iterates of the forward solve returned with a phantom gradient, for the
                    fixed-point correction loss)
    """

    f_solver: str = "anderson"
    f_max_iter: int = 18
    f_tol: float = 1e-3
    f_stop_mode: str = "rel"
    f_check_every: int = 0
    b_solver: str = "anderson"
    b_max_iter: int = 20
    b_tol: float = 1e-6
    b_stop_mode: str = "rel"
    b_check_every: int = 0
    backward: str = "implicit"
    phantom_steps: int = 5
    phantom_tau: float = 0.6
    anderson_m: int = 5
    anderson_lam: float = 1e-4
    anderson_beta: float = 1.0
    broyden_memory: int = 30
    divergence_ratio: float = 1e3
    jac_reg_weight: float = 0.0
    jac_reg_vectors: int = 1
    correction_points: int = 0
    rev_beta: float = 0.5
    rev_state_dtype: str = "float64"
    rev_error_bound: float = 1e-4

    def __post_init__(self):
        for prefix in ("f", "b"):
            get_solver(getattr(self, f"{prefix}_solver"))
            max_iter, tol = getattr(self, f"{prefix}_max_iter"), getattr(self, f"{prefix}_tol")
            stop_mode = getattr(self, f"{prefix}_stop_mode")
            if not isinstance(max_iter, int) or max_iter < 1:
                raise ValueError(f"{prefix}_max_iter must be an int >= 1; got {prefix}_max_iter={max_iter!r}")
            if not tol > 0:
                raise ValueError(f"{prefix}_tol must be > 0; got {prefix}_tol={tol!r}")
            if stop_mode not in STOP_MODES:
                raise ValueError(f"{prefix}_stop_mode must be one of {STOP_MODES}; "
                                 f"got {prefix}_stop_mode={stop_mode!r}")
            check_check_every(getattr(self, f"{prefix}_check_every"), f"{prefix}_check_every")
        require_ints(self, ("phantom_steps", "broyden_memory", "jac_reg_vectors"))
        require_ints(self, ("correction_points",), minimum=0)
        if self.backward not in BACKWARD_MODES:
            raise ValueError(f"backward must be one of {BACKWARD_MODES}; got backward={self.backward!r}")
        if not 0 < self.phantom_tau <= 1:
            raise ValueError(f"phantom_tau must be in (0, 1]; got phantom_tau={self.phantom_tau!r}")
        check_anderson_options(self.anderson_m, self.anderson_lam, self.anderson_beta)
        if not self.divergence_ratio > 1:
            raise ValueError(f"divergence_ratio must be > 1; got divergence_ratio={self.divergence_ratio!r}")
        self._check_coupled_options()
        if not self.jac_reg_weight >= 0:
            raise ValueError(f"jac_reg_weight must be >= 0; got jac_reg_weight={self.jac_reg_weight!r}")

    def _check_coupled_options(self) -> None:
        defaults = {f.name: f.default for f in fields(self)}
        coupled = self.backward in COUPLED_MODES
        # Options of the other mode left at a non-default value would do nothing, silently.
        for name in SOLVER_ONLY_OPTIONS if coupled else COUPLED_ONLY_OPTIONS:
            if getattr(self, name) != defaults[name]:
                what = (f"backward={self.backward!r} runs the coupled iteration, which does not use {name}"
                        if coupled else f"{name} applies to backward in {COUPLED_MODES} only")
                raise ValueError(f"{what}; got {name}={getattr(self, name)!r} (leave it at its default "
                                 f"{defaults[name]!r})")
        if isinstance(self.rev_beta, bool) or not isinstance(self.rev_beta, (int, float)) or not 0 < self.rev_beta < 1:
            raise ValueError(f"rev_beta must be in (0, 1) (each reverse step divides by 1 - rev_beta); "
                             f"got rev_beta={self.rev_beta!r}")
        if self.rev_state_dtype not in STATE_DTYPES:
            raise ValueError(f"rev_state_dtype must be one of {tuple(STATE_DTYPES)}; "
                             f"got rev_state_dtype={self.rev_state_dtype!r}")
        if not self.rev_error_bound > 0:
            raise ValueError(f"rev_error_bound must be > 0; got rev_error_bound={self.rev_error_bound!r}")

    def solver_options(self, solver: str) -> dict:
        """The options of the named solver that this config sets."""
        options = {"divergence_ratio": self.divergence_ratio}
        if solver == "anderson":
            options.update(m=self.anderson_m, lam=self.anderson_lam, beta=self.anderson_beta)
        elif solver == "broyden":
            options.update(memory=self.broyden_memory)
        return options
