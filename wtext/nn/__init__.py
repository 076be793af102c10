"""Layers of weight-tied masked models: mask specs and tied masked weights."""

from .learned_masks import LearnedMasks
from .learned_model import freeze_masks, learned_masks_of, match_frozen_masks, set_mask_progress
from .mask_reference import torch_mask
from .mask_spec import MASK_MODES, MaskSpec
from .packed_masks import pack_masks, unpack_masks
from .tied_weight import TiedMaskedWeight, autocast_dtype

__all__ = ["MASK_MODES", "LearnedMasks", "MaskSpec", "TiedMaskedWeight", "autocast_dtype", "freeze_masks",
           "learned_masks_of", "match_frozen_masks", "pack_masks", "set_mask_progress", "torch_mask",
           "unpack_masks"]
