"""Bit-packed masks: L 0/1 masks of a weight stored in one bit per element, the checkpoint form of learned masks
once frozen (wtext.masks freeze). Row l of the packed tensor [L, ceil(numel / 8)] (uint8) holds mask l: element i
(row-major index) is bit i % 8 (least significant first) of byte i // 8; the bits past numel in the last byte are 0.
"""

import math

import torch

_BIT_VALUES = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)


def packed_bytes(numel: int) -> int:
    """Bytes per packed mask of numel elements."""
    return (numel + 7) // 8


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """masks [L, *shape] (bool, or numbers where nonzero means kept) -> uint8 [L, ceil(numel / 8)] on their
    device."""
    if masks.dim() < 2:
        raise ValueError(f"masks must be [L, *shape] with at least 2 dims; got masks.shape={tuple(masks.shape)}")
    flat = (masks.reshape(masks.shape[0], -1) != 0).to(torch.uint8)
    numel = flat.shape[1]
    padding = packed_bytes(numel) * 8 - numel
    if padding:
        flat = torch.nn.functional.pad(flat, (0, padding))
    groups = flat.view(flat.shape[0], -1, 8)
    return (groups * _BIT_VALUES.to(masks.device)).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_masks(bits: torch.Tensor, shape) -> torch.Tensor:
    """The masks bool [L, *shape] that pack_masks packed into bits [L, ceil(numel / 8)]."""
    shape = tuple(int(size) for size in shape)
    numel = math.prod(shape)
    check_packed_shape(bits, bits.shape[0] if bits.dim() else 0, shape, "bits")
    values = _BIT_VALUES.to(bits.device)
    flat = (bits.unsqueeze(-1) & values) != 0
    return flat.reshape(bits.shape[0], -1)[:, :numel].reshape(bits.shape[0], *shape)


def check_packed_shape(bits: torch.Tensor, applications: int, shape, name: str) -> None:
    """Raises ValueError unless bits is a uint8 [applications, ceil(numel / 8)] tensor for a weight of `shape`."""
    expected = (applications, packed_bytes(math.prod(shape)))
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8 or tuple(bits.shape) != expected:
        got = f"{tuple(bits.shape)} {bits.dtype}" if isinstance(bits, torch.Tensor) else type(bits).__name__
        raise ValueError(f"{name} must be packed masks uint8 {list(expected)} ({applications} masks of a weight of "
                         f"shape {tuple(shape)}, {math.prod(shape)} bits each, 8 per byte); got {got}")
