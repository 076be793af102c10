"""TiedMaskedWeight: one stored weight and its masked views W ⊙ M_l for the L applications of a tied block."""

import math

import torch
from torch import nn

from wtext import ops

from .learned_masks import LearnedMasks
from .mask_overlap import carry_layers, chain_masks
from .mask_reference import torch_mask
from .mask_spec import MaskSpec


class TiedMaskedWeight(nn.Module):
    """A weight of `shape` shared by `applications` tied applications, each under its mask.

    forward(dtype=None) returns the masked views stacked [views, *shape] with one wtext op call per forward (views is
    L for "multi", 1 for "same", 1 for "dense" where the weight itself is the view); split(dtype) returns them as a
    tuple, and `view(views, l)` picks the weight for application l. The state_dict holds the weight only: masks are
    regenerated from the spec and seed.
    With `use_reference = True` the masks come from the plain-PyTorch mask function instead of the op (same math).
    A weight update held in the slot `weight_update` (set by wtext.lora.inject through set_weight_update) changes
    the shared weight before the masks: every application then masks W' = W + ΔW (see shared_weight), so an
    adapted model stays tied. The slot is the only link from this module to its update.
    With spec mode "learned", the child `learned` (wtext.nn.LearnedMasks) holds the trainable scores of the L masks
    (state_dict `<this module>.learned.scores`), or once frozen their bits (`.learned.bits`).
    """

    def __init__(self, shape, applications: int, spec: MaskSpec, seed_offset: int):
        super().__init__()
        if applications < 1:
            raise ValueError(f"depth must be >= 1; got depth={applications}")
        self.weight = nn.Parameter(torch.empty(shape))
        self.applications = applications
        self.spec = spec
        self.seed = spec.seed + seed_offset
        self.use_reference = False
        # The weight-update slot: set_weight_update / remove_weight_update, read by shared_weight.
        self._weight_update: nn.Module | None = None
        if spec.pattern == "nm" and spec.masked and (math.prod(shape) // shape[0]) % spec.nm[1]:
            raise ValueError(f"nm M={spec.nm[1]} must divide the reduction dimension {math.prod(shape) // shape[0]} "
                             f"of a weight of shape {tuple(shape)}")
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.learned = LearnedMasks(shape, applications, spec.density, spec.learning, spec.init, self.seed) \
            if spec.learned else None

    @property
    def views(self) -> int:
        return self.applications if self.spec.mode in ("multi", "learned") else 1

    @property
    def weight_update(self) -> nn.Module | None:
        """The module in the weight-update slot, or None: its adapt_weight(W) gives the weight the masks apply to."""
        return self._weight_update

    def set_weight_update(self, name: str, update: nn.Module) -> None:
        """Puts `update` in the weight-update slot and registers it as the child `name`, so that its parameters
        follow the module (.to, .parameters()) and its state_dict entries are `<this module>.<name>.*`.

        update.adapt_weight(W) takes the stored weight W [*shape] and returns the weight of the same shape that
        every application masks (W itself when the update is folded into W). The slot holds one update."""
        if not isinstance(update, nn.Module) or not callable(getattr(update, "adapt_weight", None)):
            raise TypeError(f"a weight update must be an nn.Module with a method adapt_weight(weight); got "
                            f"{type(update).__name__}")
        if self._weight_update is not None:
            raise ValueError(f"this TiedMaskedWeight already has a weight update "
                             f"({type(self._weight_update).__name__}); remove_weight_update() first")
        if hasattr(self, name):
            raise ValueError(f"cannot register the weight update as {name!r}: the TiedMaskedWeight already has an "
                             f"attribute {name!r}")
        self.add_module(name, update)
        # Not Module.__setattr__: it would register the update a second time, as the child `_weight_update`, and
        # add state_dict keys under that name.
        object.__setattr__(self, "_weight_update", update)

    def remove_weight_update(self) -> nn.Module:
        """Empties the weight-update slot, unregisters the update's child, and returns the update."""
        update = self._weight_update
        if update is None:
            raise ValueError("this TiedMaskedWeight has no weight update to remove")
        for name in [name for name, child in self._modules.items() if child is update]:
            del self._modules[name]
        self._weight_update = None
        return update

    def shared_weight(self) -> torch.Tensor:
        """The weight every application masks, of `shape`: the stored W, or update.adapt_weight(W) while the
        weight-update slot holds an update (a LoRA adapter gives W + ΔW, or W itself once merged into W)."""
        update = self._weight_update
        return self.weight if update is None else update.adapt_weight(self.weight)

    def forward(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        spec = self.spec
        weight = self.shared_weight()
        if not spec.masked:
            weight = weight if dtype is None else weight.to(dtype)
            return weight.unsqueeze(0)
        if self.learned is not None:
            return self.learned(weight, dtype, reference=self.use_reference)
        if self.use_reference or spec.overlapping:
            # Overlapping masks are chained from two op calls (fresh masks and carry coins), then applied here.
            stacked = weight.unsqueeze(0) * self.application_masks(reference=self.use_reference)
            return stacked if dtype is None else stacked.to(dtype)
        return ops.tied_masked_weights(weight, self.views, self.seed, spec.density, spec.pattern, spec.mode,
                                       dtype, nm=spec.nm)

    def split(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
        """forward(dtype) as a tuple of its views, for `view`. Prefer it to indexing the stacked tensor: each
        `stacked[l]` gets its own backward node that builds a zero-filled [views, *shape] gradient, and autograd sums
        those L tensors (O(L^2) work per weight per step); unbind's backward stacks the L gradients once."""
        return self(dtype).unbind(0)

    def view(self, stacked, application: int) -> torch.Tensor:
        """The weight of application l from forward()'s stacked tensor or split()'s tuple."""
        return stacked[application if self.views > 1 else 0]

    def mask(self, layer: int) -> torch.Tensor:
        """The 0/1 mask with index `layer` (all ones when dense), by the plain-PyTorch mask function; learned masks:
        the mask application `layer` uses now."""
        if self.learned is not None:
            return self.learned.masks()[layer].to(self.weight.dtype)
        if not self.spec.masked:
            return torch.ones_like(self.weight)
        return torch_mask(self.weight.shape, self.seed, layer, self.spec.density, self.spec.pattern, self.spec.nm,
                          device=self.weight.device, dtype=self.weight.dtype)

    def application_masks(self, reference: bool = False) -> torch.Tensor:
        """The 0/1 masks the applications use, [views, *shape] in the weight's dtype: from the op, or with
        reference=True from the plain-PyTorch mask function (same values)."""
        spec = self.spec
        if not spec.masked:
            return torch.ones_like(self.weight).unsqueeze(0)
        if self.learned is not None:
            return self.learned.masks().to(self.weight.dtype)
        with torch.no_grad():
            # The op masks a weight of ones: the mask, from an expanded scalar (no weight-sized buffer).
            ones = self.weight.new_ones(()).expand_as(self.weight)
            if reference:
                fresh = torch.stack([self.mask(spec.mask_layer(v)) for v in range(self.views)])
            else:
                fresh = ops.tied_masked_weights(ones, self.views, self.seed, spec.density, spec.pattern, spec.mode,
                                                nm=spec.nm)
            if not spec.overlapping:
                return fresh
            layers = carry_layers(self.views)
            if reference:
                carry = torch.stack([torch_mask(self.weight.shape, self.seed, layer, spec.overlap, "bernoulli",
                                                device=self.weight.device, dtype=self.weight.dtype)
                                     for layer in layers])
            else:
                carry = ops.tied_masked_weights(ones, layers, self.seed, spec.overlap, "bernoulli", "multi")
            return chain_masks(fresh, carry)

    def kept_per_application(self) -> float:
        """Unmasked weights per application, averaged over the applications."""
        if not self.spec.masked:
            return float(self.weight.numel())
        if self.learned is not None:
            return float(self.learned.kept)
        return self.application_masks(reference=True).flatten(1).sum(1).mean().item()

    def extra_repr(self) -> str:
        s = self.spec
        return (f"shape={tuple(self.weight.shape)}, applications={self.applications}, mode={s.mode}, "
                f"density={s.density}, pattern={s.pattern}, seed={self.seed}"
                + (f", overlap={s.overlap}" if s.overlapping else "")
                + (f", learning={s.learning}" if s.learned else ""))


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast would compute in on `device`, or None when autocast is off: masked views are then
    written directly in that dtype by the op (no separate cast kernel)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None
