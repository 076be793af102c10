"""Solvers registered by name. Every solver has the same call shape:

    solve(f, z0, *, max_iter, tol, stop_mode="rel", record_steps=(), **options) -> (z, SolverStats)

f maps a batch of states [B, ...] to a batch of the same shape; z is, per sample, the iterate with the lowest
residual seen. New solvers register with @register_solver("name"); nothing is looked up by eval of a string.
"""

from collections.abc import Callable

SOLVERS: dict[str, Callable] = {}


def register_solver(name: str):
    def register(solve: Callable) -> Callable:
        if name in SOLVERS:
            raise ValueError(f"a solver named {name!r} is already registered")
        SOLVERS[name] = solve
        return solve

    return register


def get_solver(name: str) -> Callable:
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; registered solvers: {', '.join(sorted(SOLVERS))}") from None
