"""wtext's custom ops: sparse masks (seed-derived, learned or packed) applied to one shared weight for many tied
layers."""

from . import _extension  # noqa: F401  (registers the ops; must come first)
from . import autograd, fake  # noqa: F401  (register fake kernels and autograd formulas)
from ._extension import HAS_CUDA_KERNELS
from .learned import learned_mask_thresholds, learned_masked_weights, packed_masked_weights
from .masked import DEFAULT_NM, MODES, PATTERNS, mask, masked_conv2d, masked_linear, tied_masked_weights

__all__ = [
    "DEFAULT_NM",
    "HAS_CUDA_KERNELS",
    "MODES",
    "PATTERNS",
    "learned_mask_thresholds",
    "learned_masked_weights",
    "mask",
    "masked_conv2d",
    "masked_linear",
    "packed_masked_weights",
    "tied_masked_weights",
]
