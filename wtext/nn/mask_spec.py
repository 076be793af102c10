"""MaskSpec: how a tied weight is masked across its applications. Part of every checkpoint instead of masks."""

from dataclasses import dataclass

from wtext.ops import DEFAULT_NM, MODES, PATTERNS
from wtext.validation import check_density, check_nm

from .learned_masks import ESTIMATORS, INITS

# The ops' modes (seed-derived masks) and "learned" (trained masks, wtext.nn.learned_masks).
MASK_MODES = MODES + ("learned",)


@dataclass(frozen=True)
class MaskSpec:
    """mode: "multi" (a distinct mask per application), "same" (one mask for all), "dense" (none), "learned" (a
    trained mask per application, wtext.nn.learned_masks: exactly round(density * numel) kept, starting from the
    seed's exact-count multi-masks, so pattern must be "exact" or "bernoulli", both meaning that start);
    density in (0, 1] (unused by "nm"); pattern: "bernoulli" | "exact" | "nm"; nm: (N, M); seed: the base seed
    (each tied weight of a model adds its own offset, so no two weights share a mask stream); overlap in [0, 1]:
    with mode "multi" and pattern "bernoulli", the fraction of each application's mask carried over from the
    previous application's (wtext.nn.mask_overlap): 0 gives independent masks (plain multi-mask), 1 the same mask
    everywhere; learning ("ste" | "gumbel") and init ("seed" | "random"): how learned masks train and start."""

    mode: str = "multi"
    density: float = 0.5
    pattern: str = "bernoulli"
    nm: tuple[int, int] = DEFAULT_NM
    seed: int = 0
    overlap: float = 0.0
    learning: str = "ste"
    init: str = "seed"

    def __post_init__(self):
        if self.mode not in MASK_MODES:
            raise ValueError(f"mask mode must be one of {MASK_MODES}; got mode={self.mode!r}")
        check_density(self.density)
        if self.pattern not in PATTERNS:
            raise ValueError(f"mask pattern must be one of {PATTERNS}; got pattern={self.pattern!r}")
        n, m = self.nm
        check_nm(n, m)
        object.__setattr__(self, "nm", (int(n), int(m)))
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, (int, float)) or not 0 <= self.overlap <= 1:
            raise ValueError(f"mask overlap must be a number in [0, 1]; got overlap={self.overlap!r}")
        if self.overlap > 0 and (self.mode != "multi" or self.pattern != "bernoulli"):
            # An element-wise carry keeps each weight with probability p only for independent (bernoulli) draws; it
            # would break an exact count or an N:M group.
            raise ValueError(f"mask overlap > 0 needs mode 'multi' and pattern 'bernoulli'; got mode={self.mode!r}, "
                             f"pattern={self.pattern!r}")

        if self.learning not in ESTIMATORS:
            raise ValueError(f"mask learning must be one of {ESTIMATORS}; got learning={self.learning!r}")
        if self.init not in INITS:
            raise ValueError(f"mask init must be one of {INITS}; got init={self.init!r}")
        if self.learned and self.pattern == "nm":
            # A top-k over the whole weight ignores N:M groups; a learned 2:4 mask would need a top-N per group.
            raise ValueError("learned masks keep the top round(density * numel) scores of the whole weight, not N of "
                             "every M: mode 'learned' takes pattern 'exact' (or 'bernoulli', the same for it), not "
                             "'nm'")

    @property
    def learned(self) -> bool:
        return self.mode == "learned"

    @property
    def overlapping(self) -> bool:
        return self.overlap > 0

    @property
    def masked(self) -> bool:
        return self.mode != "dense"

    def mask_layer(self, application: int) -> int:
        """The mask index (the `layer` of the mask function) that an application uses."""
        return 0 if self.mode == "same" else application
