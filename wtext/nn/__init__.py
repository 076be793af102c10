"""Layers of weight-tied masked models: mask specs and tied masked weights."""

from .mask_reference import torch_mask
from .mask_spec import MaskSpec
from .tied_weight import TiedMaskedWeight, autocast_dtype

__all__ = ["MaskSpec", "TiedMaskedWeight", "autocast_dtype", "torch_mask"]
