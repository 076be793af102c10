"""DEQConfig: every option of a deep-equilibrium layer, with defaults in the spirit of torchdeq and MDEQ."""

from dataclasses import dataclass

from wtext.validation import require_ints

from .anderson import check_anderson_options
from .registry import get_solver
from .tracking import STOP_MODES, check_check_every

BACKWARD_MODES = ("implicit", "phantom", "one_step")


@dataclass(frozen=True)
class DEQConfig:
    """Options of a DEQ layer. Frozen: a config is never mutated after it is made (use dataclasses.replace).

    Forward solve:  f_solver, f_max_iter, f_tol, f_stop_mode
    Backward:       backward = "implicit" (adjoint fixed point solved with b_solver, b_max_iter, b_tol),
                    "phantom" (phantom_steps unrolled damped steps z <- (1-tau) z + tau f(z) from the fixed point),
                    "one_step" (the Jacobian-free gradient: one undamped step)
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
        if not self.jac_reg_weight >= 0:
            raise ValueError(f"jac_reg_weight must be >= 0; got jac_reg_weight={self.jac_reg_weight!r}")

    def solver_options(self, solver: str) -> dict:
        """The options of the named solver that this config sets."""
        options = {"divergence_ratio": self.divergence_ratio}
        if solver == "anderson":
            options.update(m=self.anderson_m, lam=self.anderson_lam, beta=self.anderson_beta)
        elif solver == "broyden":
            options.update(memory=self.broyden_memory)
        return options
