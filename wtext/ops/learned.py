"""Python front ends of the learned-mask ops: masks chosen by trained scores, and frozen masks stored one bit per
element.

A learned weight of L applications has scores S [L, *weight.shape] (float32); application l keeps the `kept`
entries of S_l that come first by score (larger first; equal scores by element index, smaller first), so exactly
`kept` entries whatever the scores. wtext/nn/learned_reference.py is the specification in plain PyTorch (the order
keys, the thresholds and the straight-through gradients); wtext/nn/packed_masks.py defines the packed form.
"""

import torch

from . import _extension  # noqa: F401  (registers the ops)
from .masked import _int, _show, _tensor


def _dtype(dtype) -> None:
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None; got dtype={_show(dtype)} of type {type(dtype).__name__}")


def learned_mask_thresholds(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """The thresholds of the learned masks, int64 [L] on scores' device: for each application l the kept-th largest
    order key of S_l (2^63 - 1 when kept = 0), so that learned_masked_weights keeps exactly `kept` entries of each.

    scores: float32 [L, *weight.shape]; kept in [0, numel per application] (see
    wtext.nn.learned_reference.kept_count for a density). Not differentiable. No host synchronization on a GPU.
    """
    _tensor(scores, "scores")
    return torch.ops.wtext.learned_mask_thresholds(scores, _int(kept, "kept"))


def learned_masked_weights(weight: torch.Tensor, scores: torch.Tensor, thresholds: torch.Tensor,
                           dtype: torch.dtype | None = None) -> torch.Tensor:
    """W ⊙ M_l for every application l, stacked [L, *weight.shape], in one kernel launch: M_l keeps element i when
    its order key of scores[l, i] reaches thresholds[l] (from learned_mask_thresholds). Dropped entries are +0.

    dtype: the views' dtype (e.g. torch.bfloat16 for a float32 master weight); defaults to weight.dtype.
    A channels_last 4-d weight gives channels_last views, any other weight contiguous ones.
    Differentiable in weight (dW = sum_l dOut_l ⊙ M_l) and in scores, straight through (dS_l = dOut_l ⊙ W for every
    entry, kept or not, float32), both from one pass over the views' gradient.
    """
    _tensor(weight, "weight")
    _tensor(scores, "scores")
    _tensor(thresholds, "thresholds")
    _dtype(dtype)
    return torch.ops.wtext.learned_masked_weights(weight, scores, thresholds, dtype)


def packed_masked_weights(weight: torch.Tensor, bits: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """W ⊙ M_l for every packed mask l, stacked [L, *weight.shape], in one kernel launch: bits is uint8
    [L, ceil(weight.numel() / 8)] (wtext.nn.packed_masks.pack_masks: element i is bit i % 8 of byte i // 8), read
    on the fly. Dropped entries are +0.

    dtype and layout as learned_masked_weights. Differentiable in weight: dW = sum_l dOut_l ⊙ M_l.
    """
    _tensor(weight, "weight")
    _tensor(bits, "bits")
    _dtype(dtype)
    return torch.ops.wtext.packed_masked_weights(weight, bits, dtype)
