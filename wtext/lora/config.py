"""LoRAConfig: the options of a multi-mask LoRA adapter, from Python, a CLI string or a saved adapter file."""

import dataclasses
import numbers
from dataclasses import dataclass

from wtext.ops import DEFAULT_NM, PATTERNS
from wtext.validation import check_density, check_nm, require_ints

LORA_MODES = ("multi", "same")

# The tied weights of wtext's models: TiedResNet's cells (cells.S.conv1/conv2) and TiedViT's block. A pattern that
# matches nothing in a model is fine as long as one of them matches something (one default for both families).
DEFAULT_TARGETS = ("cells.*.conv1", "cells.*.conv2", "block.qkv", "block.proj", "block.fc1", "block.fc2")

# parse(): short names, the separator of a list of patterns inside one value, and of nm's two numbers.
ALIASES = {"r": "rank", "d": "copies"}
LIST_SEPARATOR = "+"


@dataclass(frozen=True)
class LoRAConfig:
    """A multi-mask LoRA adapter: ΔW = (alpha / rank) Σ_{k<copies} (B ⊙ M_B,k)(A ⊙ M_A,k), A [rank, in_shape...],
    B [out, rank].

    Fields:

    rank: r, the rank of the one stored pair (A, B), >= 1.
    alpha: the scale numerator; None (the default) means 2 * rank, i.e. a scaling alpha / rank of 2 whatever the rank.
    dropout: dropout probability on the adapter path's input (Linear and Conv2d), in [0, 1). A tied weight's update
        has no input of its own, so dropout does not apply to it.
    targets: fnmatch patterns of module names (as model.named_modules() gives them; `*` also matches dots) to adapt.
        The default targets the tied weights of wtext's ResNet-like and ViT-like models.
    copies: d, the masked copies of the pair summed, >= 1: ΔW can reach rank d * r.
    density: the fraction of each factor a mask keeps, in (0, 1]; unused by pattern "nm".
    pattern: a wtext mask pattern ("exact" keeps exactly round(density * numel) elements of each copy).
    nm: (N, M) of pattern "nm".
    mode: "multi" (copy k has mask k) or "same" (every copy has mask 0: ΔW has rank <= r; the comparison arm).
    seed: the base of the mask seeds; each adapted module derives its own two (wtext.lora.seeds).
    train_modules: fnmatch patterns of modules whose own parameters stay trainable (e.g. ("head",) to learn a new
        label set); every other parameter of the base model is frozen.
    """

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    copies: int = 2
    density: float = 0.5
    pattern: str = "exact"
    nm: tuple[int, int] = DEFAULT_NM
    mode: str = "multi"
    seed: int = 0
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        require_ints(self, ("rank", "copies"))
        if self.alpha is not None and (isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real)
                                       or not self.alpha > 0):
            raise ValueError(f"alpha must be a number > 0, or None for 2 * rank; got alpha={self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1); got dropout={self.dropout!r}")
        check_density(self.density)
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}; got pattern={self.pattern!r}")
        if self.mode not in LORA_MODES:
            raise ValueError(f"mode must be one of {LORA_MODES}; got mode={self.mode!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int; got seed={self.seed!r}")
        try:
            n, m = self.nm
        except (TypeError, ValueError):
            raise ValueError(f"nm must be a pair (N, M) of ints; got nm={self.nm!r}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)):
            raise ValueError(f"nm must be a pair (N, M) of ints; got nm={self.nm!r}")
        check_nm(n, m)
        object.__setattr__(self, "nm", (n, m))
        # Plain floats: a numpy scalar would make a saved adapter file unreadable by torch.load(weights_only=True).
        for name in ("dropout", "density") + (("alpha",) if self.alpha is not None else ()):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "targets", _patterns(self.targets, "targets", allow_empty=False))
        object.__setattr__(self, "train_modules", _patterns(self.train_modules, "train_modules", allow_empty=True))

    @property
    def scaling(self) -> float:
        """alpha / rank, the factor of ΔW."""
        return (2.0 * self.rank if self.alpha is None else float(self.alpha)) / self.rank

    @classmethod
    def parse(cls, text: str) -> "LoRAConfig":
        """A config from a CLI string of comma-separated key=value pairs, e.g. "r=8,alpha=16,copies=2,density=0.5".

        Keys are the field names (r for rank, d for copies also work); targets and train_modules take patterns
        joined by "+" ("targets=block.qkv+block.proj"; "train_modules=" for none); nm takes "N:M"; alpha "none".
        """
        if not isinstance(text, str):
            raise TypeError(f"a LoRA option string must be a str; got {text!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, equals, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not equals:
                raise ValueError(f"LoRA option {item!r} is not key=value (in {text!r})")
            name = ALIASES.get(key, key)
            if name not in fields:
                raise ValueError(f"unknown LoRA option {key!r} in {text!r}; options: "
                                 f"{', '.join(sorted(fields))} (r = rank, d = copies)")
            if name in values:
                raise ValueError(f"LoRA option {key!r} given twice in {text!r}")
            values[name] = _parse_value(name, raw)
        return cls(**values)

    def to_dict(self) -> dict:
        """The fields as plain Python values (lists for the tuples), for JSON or an adapter file."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "LoRAConfig":
        """The config of to_dict(); unknown keys are an error (a file of another version or a typo)."""
        if not isinstance(values, dict):
            raise ValueError(f"a LoRA config must be a dict; got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown LoRA config key(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def differences(self, other: "LoRAConfig") -> list[str]:
        """'name: mine != other' for each field that differs."""
        return [f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
                for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def _patterns(value, name: str, allow_empty: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError(f"{name} must be a tuple of module-name patterns, not one str; got {name}={value!r} "
                         f"(write ({value!r},))")
    try:
        patterns = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of module-name patterns; got {name}={value!r}") from None
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{name} must hold non-empty str patterns; got {name}={value!r}")
    if not patterns and not allow_empty:
        raise ValueError(f"{name} must hold at least one module-name pattern; got {name}={value!r}")
    return patterns


def _parse_value(name: str, raw: str):
    """One option's value from its text; errors name the option and the text."""
    def fail(expected: str):
        return ValueError(f"LoRA option {name}: expected {expected}; got {raw!r}")

    if name in ("rank", "copies", "seed"):
        try:
            return int(raw)
        except ValueError:
            raise fail("an int") from None
    if name == "alpha" and raw.lower() == "none":
        return None
    if name in ("alpha", "dropout", "density"):
        try:
            return float(raw)
        except ValueError:
            raise fail("a number") from None
    if name in ("targets", "train_modules"):
        return tuple(p.strip() for p in raw.split(LIST_SEPARATOR) if p.strip())
    if name == "nm":
        n, colon, m = raw.partition(":")
        try:
            return int(n), int(m)
        except ValueError:
            raise fail("N:M, two ints, e.g. 2:4") from None
    return raw  # pattern, mode: checked by the config
