"""Python front ends of the wtext ops: masks, tied masked weights, masked conv2d and linear layers.

Every mask is a pure function of (seed, layer, element index, pattern, density); docs/masks.md is its specification.
Patterns:
    "bernoulli"  each element kept with probability `density`
    "exact"      exactly round(density * numel) elements kept
    "nm"         N of every M consecutive elements along the reduction dimension (numel / shape[0], i.e.
                 in_channels*kh*kw for a conv weight, in_features for a linear one); `density` is not used
"""

from collections.abc import Sequence

import torch

from . import _extension  # noqa: F401  (registers the ops)

PATTERNS = ("bernoulli", "exact", "nm")
MODES = ("dense", "same", "multi")
DEFAULT_NM = (2, 4)


def _pair(value, name: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    values = list(value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints; got {name}={value!r}")
    return values


def _nm_pair(nm) -> tuple[int, int]:
    try:
        n, m = nm
    except (TypeError, ValueError):
        raise ValueError(f"nm must be a pair (N, M), e.g. (2, 4); got nm={nm!r}") from None
    return int(n), int(m)


def _layer_list(layers) -> list[int]:
    if isinstance(layers, int):
        if layers < 1:
            raise ValueError(f"layers must be >= 1 when given as a count; got layers={layers}")
        return list(range(layers))
    return [int(layer) for layer in layers]


def mask(
    shape: Sequence[int],
    seed: int,
    layer: int = 0,
    density: float = 0.5,
    pattern: str = "bernoulli",
    *,
    nm: tuple[int, int] = DEFAULT_NM,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The 0/1 mask M_layer of a weight of `shape` (rank >= 2), as a tensor of `dtype` on `device`.

    Identical on every call, on CPU and CUDA alike.
    """
    like = torch.empty(tuple(shape), dtype=dtype, device=device)
    n, m = _nm_pair(nm)
    return torch.ops.wtext.mask(like, int(seed), int(layer), float(density), pattern, n, m)


def tied_masked_weights(
    weight: torch.Tensor,
    layers: int | Sequence[int],
    seed: int,
    density: float = 0.5,
    pattern: str = "bernoulli",
    mode: str = "multi",
    dtype: torch.dtype | None = None,
    *,
    nm: tuple[int, int] = DEFAULT_NM,
) -> torch.Tensor:
    """W ⊙ M_l for every requested layer l, stacked: shape [len(layers), *weight.shape], in one kernel launch.

    layers: a count L (meaning layers 0..L-1) or a list of layer indices (>= 0).
    mode: "multi" (mask of layer l for layer l), "same" (layer 0's mask for every layer), "dense" (no mask).
    dtype: output dtype (e.g. torch.bfloat16 for a float32 master weight); defaults to weight.dtype.
    A channels_last 4-d weight gives channels_last views (out[l] is channels_last), as channels_last convolutions
    want them; any other weight gives contiguous views.
    Differentiable in weight: dW = sum_l dOut_l ⊙ M_l, one fused reduction with regenerated masks.
    """
    n, m = _nm_pair(nm)
    return torch.ops.wtext.tied_masked_weights(
        weight, _layer_list(layers), int(seed), float(density), pattern, n, m, mode, dtype
    )


def masked_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seed: int = 0,
    layer: int = 0,
    density: float = 0.5,
    pattern: str = "bernoulli",
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    *,
    nm: tuple[int, int] = DEFAULT_NM,
) -> torch.Tensor:
    """conv2d(x, W ⊙ M_layer, bias): x [N, C, H, W] (contiguous or channels_last), weight [out, C, kh, kw], groups=1.

    The weight may be kept in a wider dtype than x (e.g. float32 master weight, bfloat16 activations): the masked
    weight is produced directly in x's dtype. The output has x's dtype and layout. When x needs a gradient, the
    masked weight is kept for the backward (one weight-sized tensor in x's dtype) instead of being regenerated, if
    it has at most 2^20 elements or no more than x.
    """
    n, m = _nm_pair(nm)
    return torch.ops.wtext.masked_conv2d(
        x, weight, bias, int(seed), int(layer), float(density), pattern, n, m,
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"),
    )


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seed: int = 0,
    layer: int = 0,
    density: float = 0.5,
    pattern: str = "bernoulli",
    *,
    nm: tuple[int, int] = DEFAULT_NM,
) -> torch.Tensor:
    """x @ (W ⊙ M_layer)^T + bias: x [..., in], weight [out, in]; output [..., out] in x's dtype."""
    n, m = _nm_pair(nm)
    return torch.ops.wtext.masked_linear(x, weight, bias, int(seed), int(layer), float(density), pattern, n, m)
