"""A pure-Python implementation of the mask function, written from docs/masks.md (version 1), independent of the
C++ code. The tests compare the CPU and CUDA kernels with it element for element."""

import math

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def layer_key(seed: int, layer: int) -> int:
    return mix64((seed & MASK64) + GAMMA * (layer + 1))


def element_hash(key: int, index: int) -> int:
    return mix64(key + GAMMA * (index + 1))


def reference_mask(shape, seed, layer, density, pattern, nm=(2, 4)) -> list[int]:
    """The mask as a flat list of 0/1 in row-major order."""
    numel = math.prod(shape)
    key = layer_key(seed, layer)
    hashes = [element_hash(key, i) for i in range(numel)]
    if pattern == "bernoulli":
        threshold = math.floor(density * 2.0**32)
        return [int((h >> 32) < threshold) for h in hashes]
    if pattern == "exact":
        keep = math.floor(density * numel + 0.5)
        order = sorted(range(numel), key=lambda i: ((hashes[i] >> 33) << 32) | i)
        mask = [0] * numel
        for i in order[:keep]:
            mask[i] = 1
        return mask
    if pattern == "nm":
        n, m = nm
        mask = [0] * numel
        for start in range(0, numel, m):
            group = sorted(range(start, start + m), key=lambda i: (hashes[i], i))
            for i in group[:n]:
                mask[i] = 1
        return mask
    raise ValueError(pattern)
