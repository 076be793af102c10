"""Learned masks in plain PyTorch tensor arithmetic (no custom ops): the specification the learned-mask ops
(wtext.ops.learned_mask_thresholds, learned_masked_weights) are tested against, and docs/masks.md's
"Learned masks" section in code.

A learned weight of L applications has scores S [L, *shape] (float32). Application l keeps the `kept` entries of
S_l that come first in one total order: by score, larger first, and among equal scores by element index, smaller
first. So exactly `kept` entries are kept whatever the scores (ties included), on every device alike. The order is
that of an int64 key per element:
    key(s, i) = ordered(s) * 2^32 + (2^32 - 1 - i)
where ordered(s) is the float32 bit pattern of s read as an int32 and, for negative s, with its 31 low bits flipped
(an int32 that orders like the float: -2.0 < -1.0 < -0.0 < +0.0 < 1.0), and i is the element's row-major index
(< 2^32). The threshold of application l is the kept-th largest key of S_l; an element is kept when its key is
>= the threshold. With kept = 0 the threshold is 2^63 - 1, which no finite score reaches.
"""

import math

import torch

INT64_MAX = (1 << 63) - 1


def kept_count(density: float, numel: int) -> int:
    """How many entries a learned mask of `density` keeps in a weight of numel elements: round(density * numel),
    halves up (floor(density * numel + 0.5) in double), as the "exact" pattern keeps."""
    return math.floor(density * numel + 0.5)


def score_keys(scores: torch.Tensor) -> torch.Tensor:
    """The order keys of scores [L, *shape] (float32): int64 [L, numel]."""
    if scores.dtype != torch.float32:
        raise TypeError(f"scores must be float32; got scores.dtype={scores.dtype}")
    bits = scores.detach().contiguous().view(torch.int32).flatten(1).to(torch.int64)  # sign-extended
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    numel = bits.shape[1]
    index_part = 0xFFFFFFFF - torch.arange(numel, dtype=torch.int64, device=scores.device)
    return (ordered << 32) | index_part


def thresholds(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """The per-application thresholds, int64 [L]: the kept-th largest key of each S_l (2^63 - 1 when kept = 0)."""
    keys = score_keys(scores)
    numel = keys.shape[1]
    if not 0 <= kept <= numel:
        raise ValueError(f"kept must be in [0, {numel}]; got kept={kept}")
    if kept == 0:
        return torch.full((keys.shape[0],), INT64_MAX, dtype=torch.int64, device=scores.device)
    return keys.kthvalue(numel - kept + 1, dim=1).values


def learned_masks(scores: torch.Tensor, thresholds_: torch.Tensor) -> torch.Tensor:
    """The 0/1 masks, bool [L, *shape]: key >= threshold of the application."""
    keep = score_keys(scores) >= thresholds_.unsqueeze(1)
    return keep.view(scores.shape)


def learned_masked_weights(weight: torch.Tensor, scores: torch.Tensor, thresholds_: torch.Tensor,
                           dtype: torch.dtype | None = None) -> torch.Tensor:
    """W ⊙ M_l for every application, [L, *shape] in `dtype` (weight's by default), with the straight-through
    gradients of the op: dW = sum_l g_l ⊙ M_l and dS_l = g_l ⊙ W (every entry of S_l, kept or not)."""
    masks = learned_masks(scores, thresholds_).to(weight.dtype)
    # Forward value W ⊙ M; the score term is zero in value and carries dS = g ⊙ W.
    straight_through = scores - scores.detach()
    views = weight.unsqueeze(0) * masks + weight.detach().unsqueeze(0) * straight_through.to(weight.dtype)
    return views if dtype is None else views.to(dtype)
