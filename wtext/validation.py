"""Option checks shared by the configuration dataclasses: errors name the option and the bad value."""


def require_ints(config, names, minimum: int = 1) -> None:
    """Each named field of `config` must be an int >= minimum (not a bool, which Python counts as an int)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}; got {name}={value!r}")


def check_density(density) -> None:
    """A mask density: a real number in (0, 1]."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1]; got density={density!r}")


def check_nm(n: int, m: int) -> None:
    """An N:M pattern: N kept of every M, 1 <= N <= M <= 64 (the kernels' limit on M)."""
    if not 1 <= n <= m <= 64:
        raise ValueError(f"nm must satisfy 1 <= N <= M <= 64; got nm={(n, m)!r}")
