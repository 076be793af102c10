"""The mask function of docs/masks.md in plain PyTorch tensor arithmetic (no custom ops).

It is the mask half of every model's pure-PyTorch reference path, which the tests compare with the wtext path.
uint64 arithmetic is emulated on int64 tensors: additions and multiplications wrap modulo 2^64 alike, right shifts
are made logical by masking off the sign extension, and unsigned order is signed order with the top bit flipped.
"""

import math

import torch

_MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _shift_right(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shift_right(z, 27)) * _signed(0x94D049BB133111EB)
    return z ^ _shift_right(z, 31)


def _layer_key(seed: int, layer: int) -> int:
    """Scalar SplitMix64 step in Python ints (exact), as in the spec."""
    z = (seed + GAMMA * (layer + 1)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def element_hashes(seed: int, layer: int, numel: int, device=None) -> torch.Tensor:
    """h(i) for i < numel as int64 tensors holding the uint64 bit patterns."""
    key = _signed(_layer_key(seed, layer))
    index = torch.arange(1, numel + 1, dtype=torch.int64, device=device)
    return _mix64(key + index * _signed(GAMMA))


def torch_mask(shape, seed: int, layer: int, density: float, pattern: str, nm=(2, 4), device=None,
               dtype=torch.float32) -> torch.Tensor:
    """The 0/1 mask M_layer of a weight of `shape`, computed with ordinary tensor operations."""
    numel = math.prod(shape)
    hashes = element_hashes(seed, layer, numel, device)
    if pattern == "bernoulli":
        keep = _shift_right(hashes, 32) < math.floor(density * 2.0**32)
    elif pattern == "exact":
        count = math.floor(density * numel + 0.5)
        rank_keys = (_shift_right(hashes, 33) << 32) | torch.arange(numel, dtype=torch.int64, device=device)
        keep = torch.zeros(numel, dtype=torch.bool, device=device)
        keep[torch.argsort(rank_keys)[:count]] = True
    elif pattern == "nm":
        n, m = nm
        ordered = (hashes ^ _signed(1 << 63)).view(-1, m)  # unsigned order as signed order
        ranks = torch.argsort(torch.argsort(ordered, dim=1, stable=True), dim=1, stable=True)
        keep = (ranks < n).flatten()
    else:
        raise ValueError(f"pattern must be one of 'bernoulli', 'exact', 'nm'; got pattern={pattern!r}")
    return keep.view(tuple(shape)).to(dtype)
