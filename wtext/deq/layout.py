"""Flattening solver states to [B, d] without copying them, whatever their memory layout.

Solvers work on flat per-sample vectors, but a convolutional cell wants its state channels_last. `reshape` of a
channels_last tensor copies it into the NCHW order, and the solver's output then reaches the cell as NCHW, which
makes every convolution in the cell convert layouts (on an H100 this cost about 12% of a DEQ training step).
Anderson and Broyden only take dot products and per-element mixes of the flat vectors, so any fixed element
order works; flattening in memory order keeps both directions a free view.
"""

import torch


class SampleFlattener:
    """Maps states shaped like `like` to [B, d] and back, in `like`'s memory order."""

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
