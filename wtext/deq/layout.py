"""Flattening solver states to [B, d] without copying them, in the memory layout the cell produces.

Solvers work on flat per-sample vectors. Anderson and Broyden only take dot products and per-element mixes of
them, so any fixed element order works, and flattening in memory order makes both directions a free view. Which
layout to keep is decided by the cell's output f(z), not by z0: the next iterate is a mix of f's outputs, and the
tracker's elementwise work (f(z) - z, keeping finished samples) runs vectorized only when z and f(z) share a
layout. Measured on an H100 (workload B, GroupNorm-ended cell, whose output is NCHW even for channels_last
input): keeping z0's channels_last layout instead made every flatten a copy (346 copies, 21.6 ms of a step) and
every such op a strided mixed-layout kernel. (That run also had slower Anderson kernels; together the step went
from 101 to 143 ms.)
"""

import torch


class SampleFlattener:
    """Maps states shaped like `like` to [B, d] and back, in `like`'s memory order (build it from f(z0))."""

    def __init__(self, like: torch.Tensor):
        self.shape = like.shape
        self.channels_last = (like.dim() == 4 and not like.is_contiguous()
                              and like.is_contiguous(memory_format=torch.channels_last))

    def flatten(self, state: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [B, d]; a view when state has the layout of `like` (a copy otherwise, still correct)."""
        if self.channels_last:
            state = state.permute(0, 2, 3, 1)
        return state.reshape(self.shape[0], -1)

    def unflatten(self, flat: torch.Tensor) -> torch.Tensor:
        """[B, d] (contiguous) -> [B, ...] with the layout of `like`, as a view."""
        if self.channels_last:
            batch, channels, height, width = self.shape
            return flat.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return flat.view(self.shape)
