"""Python front ends of the wtext ops: masks, tied masked weights, masked conv2d and linear layers.

Every mask is a pure function of (seed, layer, element index, pattern, density); docs/masks.md is its specification.
Patterns:
    "bernoulli"  each element kept with probability `density`
    "exact"      exactly round(density * numel) elements kept
    "nm"         N of every M consecutive elements along the reduction dimension (numel / shape[0], i.e.
                 in_channels*kh*kw for a conv weight, in_features for a linear one); `density` is not used
"""

import math
import numbers
import operator
from collections.abc import Iterable, Sequence

import torch

from . import _extension  # noqa: F401  (registers the ops)

PATTERNS = ("bernoulli", "exact", "nm")
MODES = ("dense", "same", "multi")
DEFAULT_NM = (2, 4)

# The ops take int64 arguments. Every argument is checked here, with an error that names it and shows the value:
# the dispatcher's own error for a Python int outside that range ("Expected a value of type 'int' ... but instead
# found type 'int'") names neither, and int() would truncate a float (seed=1.5 meaning seed=1) or parse a str.
# bool is an int subclass but never a meaningful seed, layer, count or size here: it is rejected everywhere.
# A layer op runs once per tied application, so its host time counts L times: the common cases (a plain int, a float,
# a pair of ints) take the first branch of each check, and all of them add well under 1 us per call (dev CPU).
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1


def _show(value) -> str:
    """A bounded repr for error messages (a tensor or a long list passed by mistake stays readable)."""
    if isinstance(value, torch.Tensor):
        return f"<tensor of shape {tuple(value.shape)}, {value.dtype}>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bound(value: int) -> str:
    for exponent in (63, 64):
        if value == (1 << exponent) - 1:
            return f"2^{exponent} - 1"
        if value == -(1 << exponent):
            return f"-2^{exponent}"
    return str(value)


def _integer(value):
    """value as an int (a traced dynamic SymInt as it is), or None when it is no integer; bool counts as none."""
    if type(value) is int or isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return None
    try:
        return operator.index(value)  # numpy ints, integer 0-d tensors
    except TypeError:  # e.g. a float tensor, whose __index__ refuses
        return None


def _in_range(value, low: int, high: int) -> bool:
    return isinstance(value, torch.SymInt) or low <= value <= high  # a SymInt's value is checked by the op


def _int(value, name: str, low: int = INT64_MIN, high: int = INT64_MAX, what: str = "an int") -> int:
    """value as an int in [low, high]; TypeError for a non-integer (bool, float, str, ...), ValueError out of range."""
    if type(value) is int and low <= value <= high:
        return value
    result = _integer(value)
    if result is None:
        raise TypeError(f"{name} must be {what}; got {name}={_show(value)} of type {type(value).__name__}")
    if not _in_range(result, low, high):
        raise ValueError(f"{name} must be {what} in [{_bound(low)}, {_bound(high)}]; got {name}={result}")
    return result


def _int_elements(values, name: str, what: str, container) -> list[int]:
    """The elements of `values` as int64 ints; errors name the whole argument `container` and the bad element."""
    result = []
    for value in values:
        integer = _integer(value)
        if integer is None:
            raise TypeError(f"{name} must be {what}; got {name}={_show(container)}, whose element {_show(value)} is "
                            f"of type {type(value).__name__}")
        if not _in_range(integer, INT64_MIN, INT64_MAX):
            raise ValueError(f"{name} must be {what}, each in [-2^63, 2^63 - 1]; got {name}={_show(container)}, "
                             f"whose element {integer} is out of that range")
        result.append(integer)
    return result


def _is_scalar(value) -> bool:
    """Whether value is one number rather than a sequence (then it is checked as an int)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0
    return not isinstance(value, (Iterable, str, bytes))


def _seed(seed) -> int:
    """The seed as the int64 the op takes. Seeds are 64-bit (docs/masks.md: taken modulo 2^64), so the unsigned
    range [2^63, 2^64) is accepted too and passed as the int64 with the same bits."""
    if type(seed) is int and INT64_MIN <= seed <= INT64_MAX:
        return seed
    seed = _int(seed, "seed", INT64_MIN, UINT64_MAX)
    return seed - (1 << 64) if not isinstance(seed, torch.SymInt) and seed > INT64_MAX else seed


def _density(density) -> float:
    if type(density) is float:
        return density
    if isinstance(density, bool) or not isinstance(density, (numbers.Real, torch.SymInt, torch.SymFloat)):
        raise TypeError(f"density must be a real number in (0, 1]; got density={_show(density)} "
                        f"of type {type(density).__name__}")
    try:
        return float(density)
    except OverflowError:  # an int too large for a float is out of range anyway
        raise ValueError(f"density must be in (0, 1]; got density={density}") from None


def _choice(value, name: str, choices: tuple[str, ...]) -> str:
    """A str argument; its value is checked by the op (one message for every caller)."""
    if type(value) is not str and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}; got {name}={_show(value)} "
                        f"of type {type(value).__name__}")
    return value


def _pair(value, name: str) -> list[int]:
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return [value, value]
    what = "an int or a pair of ints"
    if _is_scalar(value):
        single = _int(value, name, what=what)
        return [single, single]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be {what}; got {name}={_show(value)} of type {type(value).__name__}")
    values = list(value)
    if len(values) != 2:
        raise ValueError(f"{name} must be {what}; got {name}={_show(value)}")
    return _int_elements(values, name, what, value)


def _nm_pair(nm) -> tuple[int, int]:
    if type(nm) is tuple and len(nm) == 2 and type(nm[0]) is int and type(nm[1]) is int and \
            INT64_MIN <= nm[0] <= INT64_MAX and INT64_MIN <= nm[1] <= INT64_MAX:
        return nm
    what = "a pair (N, M) of ints, e.g. (2, 4)"
    if isinstance(nm, (str, bytes)):
        raise ValueError(f"nm must be {what}; got nm={_show(nm)}")
    try:
        n, m = nm
    except (TypeError, ValueError):
        raise ValueError(f"nm must be {what}; got nm={_show(nm)}") from None
    n, m = _int_elements((n, m), "nm", what, nm)
    return n, m


def _layer_list(layers) -> list[int]:
    if type(layers) is int or _is_scalar(layers):
        count = _int(layers, "layers", what="a count or a sequence of layer indices")
        if count < 1:
            raise ValueError(f"layers must be >= 1 when given as a count; got layers={count}")
        return list(range(count))
    what = "a count or a sequence of layer indices (ints)"
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(f"layers must be {what}; got layers={_show(layers)} of type {type(layers).__name__}")
    return _int_elements(layers, "layers", what, layers)


def _tensor(value, name: str, optional: bool = False) -> None:
    if not isinstance(value, torch.Tensor) and not (optional and value is None):
        kind = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"{name} must be {kind}; got {name}={_show(value)} of type {type(value).__name__}")


def _layer_tensors(x, weight, bias) -> None:
    _tensor(x, "x")
    _tensor(weight, "weight")
    _tensor(bias, "bias", optional=True)


def _like(shape, dtype, device) -> torch.Tensor:
    """A tensor with mask()'s shape, dtype and device for the mask op, which reads nothing else of it: an expanded
    scalar, so no mask-sized buffer is allocated besides the mask."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
        raise TypeError(f"shape must be a sequence of ints; got shape={_show(shape)} of type {type(shape).__name__}")
    sizes = _int_elements(shape, "shape", "a sequence of sizes (ints >= 0)", shape)
    if any(size < 0 for size in sizes):
        raise ValueError(f"shape must be a sequence of sizes (ints >= 0); got shape={_show(shape)}")
    if math.prod(sizes) >= 1 << 32:
        raise ValueError(f"shape must have fewer than 2^32 elements for masking; got shape={_show(shape)} with "
                         f"{math.prod(sizes)} elements")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype; got dtype={_show(dtype)}")
    try:
        device = torch.device(device) if device is not None else None
    except (RuntimeError, TypeError, ValueError) as error:
        raise type(error)(f"device must be a torch.device, a device string or None; got device={_show(device)} "
                          f"({error})") from None
    return torch.empty((), dtype=dtype, device=device).expand(sizes)


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
    like = _like(shape, dtype, device)
    n, m = _nm_pair(nm)
    return torch.ops.wtext.mask(like, _seed(seed), _int(layer, "layer"), _density(density),
                                _choice(pattern, "pattern", PATTERNS), n, m)


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
    _tensor(weight, "weight")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None; got dtype={_show(dtype)} of type {type(dtype).__name__}")
    n, m = _nm_pair(nm)
    return torch.ops.wtext.tied_masked_weights(
        weight, _layer_list(layers), _seed(seed), _density(density), _choice(pattern, "pattern", PATTERNS), n, m,
        _choice(mode, "mode", MODES), dtype,
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
    _layer_tensors(x, weight, bias)
    n, m = _nm_pair(nm)
    return torch.ops.wtext.masked_conv2d(
        x, weight, bias, _seed(seed), _int(layer, "layer"), _density(density), _choice(pattern, "pattern", PATTERNS),
        n, m, _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"),
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
    """x @ (W ⊙ M_layer)^T + bias: x [..., in] (x [in] gives [out], as F.linear), weight [out, in]; output [..., out]
    in x's dtype."""
    _layer_tensors(x, weight, bias)
    n, m = _nm_pair(nm)
    return torch.ops.wtext.masked_linear(x, weight, bias, _seed(seed), _int(layer, "layer"), _density(density),
                                         _choice(pattern, "pattern", PATTERNS), n, m)
