"""Option checks shared by the configuration dataclasses: errors name the option and the bad value."""


def require_ints(config, names, minimum: int = 1) -> None:
    """Each named field of `config` must be an int >= minimum."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}; got {name}={value!r}")
