"""LearnedMasks: the L trainable masks of one tied weight (MaskSpec mode "learned"), and their frozen form.

Each application l has scores S_l of the weight's shape; it keeps the top round(density * numel) entries of S_l
(wtext/nn/learned_reference.py defines the order, ties included), so every mask has exactly the density asked for.
Two estimators train the scores:
    "ste"     edge-popup's straight-through gradient (arXiv 1911.13299): the forward uses the top-k mask, the
              backward passes dL/dS_l = dL/d(W ⊙ M_l) ⊙ W to every score. One op computes all L views.
    "gumbel"  a hard-concrete relaxation (Louizos et al. 2018, the Gumbel-sigmoid the paper suggests): in training,
              gate = clamp(sigmoid((log u - log(1 - u) + S) / temperature) * (zeta - gamma) + gamma, 0, 1) with
              u ~ U(0, 1) and S read as log alpha; the temperature follows a schedule (set_progress), and a penalty
              pulls each application's expected share of open gates to the density. Evaluation uses the top-k mask.
Frozen (freeze()), the masks are kept as bits, 1 per weight per application (wtext/nn/packed_masks.py), the scores
are dropped, and the views are made from the bits by one op.
"""

import math

import torch
from torch import nn

from wtext.ops import learned as learned_ops

from . import learned_reference
from .learned_reference import kept_count, learned_masks
from .mask_reference import torch_mask
from .packed_masks import check_packed_shape, pack_masks, unpack_masks

ESTIMATORS = ("ste", "gumbel")
INITS = ("seed", "random")

# Hard-concrete stretch interval (Louizos et al. 2018): gates below 0 or above 1 are clamped to exactly 0 or 1.
GAMMA, ZETA = -0.1, 1.1

# The scores' starting spread, per estimator. Straight-through scores only rank (their scale matters against the
# optimizer's step: Adam moves a score by about the learning rate per step, so a margin of 10 steps lets masks
# change within an epoch). Gumbel scores are log-odds: a margin of 3 opens a kept gate with probability ~0.99 and a
# dropped one with ~0.2 at the start temperature, so the relaxed model starts near the seed's masks.
INIT_MARGIN = {"ste": 0.01, "gumbel": 3.0}


class LearnedMasks(nn.Module):
    """The masks of a weight of `shape` for `applications` applications. forward(weight, dtype) gives the masked
    views [applications, *shape] of `weight` (the tied weight, or the weight its update slot makes). The gumbel
    estimator's schedule and penalty come from configure() (wtext.train does it from its options); until then it
    trains at temperature 2/3 without a density penalty."""

    def __init__(self, shape, applications: int, density: float, estimator: str, init: str, seed: int):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"mask learning must be one of {ESTIMATORS}; got {estimator!r}")
        if init not in INITS:
            raise ValueError(f"mask init must be one of {INITS}; got {init!r}")
        self.shape, self.applications, self.density = tuple(shape), applications, density
        self.estimator, self.init, self.seed = estimator, init, seed
        self.kept = kept_count(density, math.prod(self.shape))
        self.scores = nn.Parameter(self.starting_scores())
        # The relaxation's temperature: a buffer filled in place, so a captured graph sees every new value; not
        # saved (set_progress derives it from the schedule's position).
        self.register_buffer("temperature", torch.ones(()), persistent=False)
        self.penalty_weight = 0.0
        self.temperatures = (2 / 3, 2 / 3)

    @property
    def frozen(self) -> bool:
        return "bits" in self._buffers

    def seed_masks(self) -> torch.Tensor:
        """The seed-derived multi-masks the scores start from, float 0/1 [applications, *shape]: application l's is
        the exact-count mask of layer l, as a static multi-mask model with pattern "exact" uses."""
        return torch.stack([torch_mask(self.shape, self.seed, layer, self.density, "exact")
                            for layer in range(self.applications)])

    def starting_scores(self) -> torch.Tensor:
        margin = INIT_MARGIN[self.estimator]
        generator = torch.Generator().manual_seed(self.seed % (1 << 63))
        size = (self.applications, *self.shape)
        if self.init == "random":
            return margin * torch.randn(size, generator=generator)
        # Kept entries score in [margin/2, 3 margin/2], dropped ones in [-3 margin/2, -margin/2]: the top-k of the
        # start is the seed's mask, and the noise orders entries within each side.
        noise = (torch.rand(size, generator=generator) - 0.5) * margin
        return margin * (2 * self.seed_masks() - 1) + noise

    # -- the schedule of the relaxation ----------------------------------------------------------------------------
    def configure(self, temperatures: tuple[float, float], penalty_weight: float) -> None:
        """The gumbel estimator's temperature schedule (start, end) and density-penalty weight."""
        self.temperatures, self.penalty_weight = temperatures, penalty_weight
        self.set_progress(0.0)

    def set_progress(self, fraction: float) -> None:
        """The temperature at `fraction` of training: geometric from the start to the end temperature."""
        start, end = self.temperatures
        fraction = min(max(fraction, 0.0), 1.0)
        self.temperature.fill_(start * (end / start) ** fraction)

    # -- views, masks, penalty -------------------------------------------------------------------------------------
    def forward(self, weight: torch.Tensor, dtype: torch.dtype | None = None, reference: bool = False) -> torch.Tensor:
        """The views [applications, *shape] in `dtype` (weight's by default); reference=True computes them with
        plain PyTorch (wtext.nn.learned_reference) instead of the ops, with the same values and gradients."""
        if self.frozen:
            if reference:
                return _cast(weight.unsqueeze(0) * unpack_masks(self.bits, self.shape).to(weight.dtype), dtype)
            return learned_ops.packed_masked_weights(weight, self.bits, dtype)
        if self.training and self.estimator == "gumbel":
            return _cast(weight.unsqueeze(0) * self.relaxed_gates().to(weight.dtype), dtype)
        if reference:
            thresholds = learned_reference.thresholds(self.scores, self.kept)
            return learned_reference.learned_masked_weights(weight, self.scores, thresholds, dtype)
        thresholds = learned_ops.learned_mask_thresholds(self.scores, self.kept)
        return learned_ops.learned_masked_weights(weight, self.scores, thresholds, dtype)

    def relaxed_gates(self) -> torch.Tensor:
        """Hard-concrete gates in [0, 1] (exactly 0 or 1 where the stretch is clamped), float32 like the scores."""
        noise = torch.rand_like(self.scores).clamp_(1e-6, 1 - 1e-6)
        logistic = torch.log(noise) - torch.log1p(-noise)
        gate = torch.sigmoid((logistic + self.scores) / self.temperature)
        return (gate * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def density_penalty(self) -> torch.Tensor:
        """gumbel: penalty_weight * sum over applications of (expected share of open gates - density)^2; 0 for the
        straight-through estimator and once frozen."""
        if self.frozen or self.estimator != "gumbel" or not self.penalty_weight:
            return torch.zeros((), device=self.temperature.device)
        open_probability = torch.sigmoid(self.scores - self.temperature * math.log(-GAMMA / ZETA))
        shares = open_probability.flatten(1).mean(1)
        return self.penalty_weight * ((shares - self.density) ** 2).sum()

    @torch.no_grad()
    def masks(self) -> torch.Tensor:
        """The masks the applications use outside training, bool [applications, *shape]."""
        if self.frozen:
            return unpack_masks(self.bits, self.shape)
        return learned_masks(self.scores, learned_ops.learned_mask_thresholds(self.scores, self.kept))

    # -- freezing --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def freeze(self) -> None:
        """Keeps the current masks as bits and drops the scores (no longer a parameter)."""
        if self.frozen:
            return
        bits = pack_masks(self.masks())
        del self.scores
        self.register_buffer("bits", bits)

    def prepare_frozen(self, bits: torch.Tensor, name: str) -> None:
        """Turns this module into the frozen form to load `bits` (a frozen checkpoint's entry `name`) into; a bit
        count that does not fit the weight is a ValueError naming the entry."""
        check_packed_shape(bits, self.applications, self.shape, name)
        if not self.frozen:
            del self.scores
            self.register_buffer("bits", torch.zeros_like(bits, device=self.temperature.device))

    def extra_repr(self) -> str:
        state = "frozen" if self.frozen else f"estimator={self.estimator}"
        return f"applications={self.applications}, kept={self.kept}, {state}"


def _cast(views: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return views if dtype is None else views.to(dtype)
