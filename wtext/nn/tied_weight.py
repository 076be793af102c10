"""TiedMaskedWeight: one stored weight and its masked views W ⊙ M_l for the L applications of a tied block."""

import math

import torch
from torch import nn

from wtext import ops

from .mask_reference import torch_mask
from .mask_spec import MaskSpec


class TiedMaskedWeight(nn.Module):
    """A weight of `shape` shared by `applications` tied applications, each under its mask.

    forward(dtype=None) returns the masked views stacked [views, *shape] with one wtext op call per forward (views is
    L for "multi", 1 for "same", 1 for "dense" where the weight itself is the view); split(dtype) returns them as a
    tuple, and `view(views, l)` picks the weight for application l. The state_dict holds the weight only: masks are
    regenerated from the spec and seed.
    With `use_reference = True` the masks come from the plain-PyTorch mask function instead of the op (same math).
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
        if spec.pattern == "nm" and spec.masked and (math.prod(shape) // shape[0]) % spec.nm[1]:
            raise ValueError(f"nm M={spec.nm[1]} must divide the reduction dimension {math.prod(shape) // shape[0]} "
                             f"of a weight of shape {tuple(shape)}")
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    @property
    def views(self) -> int:
        return self.applications if self.spec.mode == "multi" else 1

    def forward(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        spec = self.spec
        if not spec.masked:
            weight = self.weight if dtype is None else self.weight.to(dtype)
            return weight.unsqueeze(0)
        if self.use_reference:
            masks = torch.stack([self.mask(spec.mask_layer(v)) for v in range(self.views)])
            stacked = self.weight.unsqueeze(0) * masks
            return stacked if dtype is None else stacked.to(dtype)
        return ops.tied_masked_weights(self.weight, self.views, self.seed, spec.density, spec.pattern, spec.mode,
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
        """The 0/1 mask with index `layer` (all ones when dense), by the plain-PyTorch mask function."""
        if not self.spec.masked:
            return torch.ones_like(self.weight)
        return torch_mask(self.weight.shape, self.seed, layer, self.spec.density, self.spec.pattern, self.spec.nm,
                          device=self.weight.device, dtype=self.weight.dtype)

    def kept_per_application(self) -> float:
        """Unmasked weights per application, averaged over the applications."""
        if not self.spec.masked:
            return float(self.weight.numel())
        with torch.no_grad():
            kept = [self.mask(self.spec.mask_layer(a)).sum().item() for a in range(self.applications)]
        return sum(kept) / len(kept)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"shape={tuple(self.weight.shape)}, applications={self.applications}, mode={s.mode}, "
                f"density={s.density}, pattern={s.pattern}, seed={self.seed}")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast would compute in on `device`, or None when autocast is off: masked views are then
    written directly in that dtype by the op (no separate cast kernel)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None
