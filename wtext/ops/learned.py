"""TEMPORARY plain-PyTorch stand-ins for the learned-mask ops (replaced by the C++/CUDA ops)."""

from wtext.nn import learned_reference as _reference
from wtext.nn.packed_masks import unpack_masks


def learned_mask_thresholds(scores, kept):
    return _reference.thresholds(scores, kept)


def learned_masked_weights(weight, scores, thresholds, dtype=None):
    return _reference.learned_masked_weights(weight, scores, thresholds, dtype)


def packed_masked_weights(weight, bits, dtype=None):
    views = weight.unsqueeze(0) * unpack_masks(bits, weight.shape).to(weight.dtype)
    return views if dtype is None else views.to(dtype)
