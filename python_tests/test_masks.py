"""The mask function: agreement with the pure-Python reference of docs/masks.md and its statistical properties."""

import math

import pytest
import torch

import wtext.ops as ops
from conftest import requires_cuda
from pure_python_mask import reference_mask

SHAPES = [(4, 8), (3, 1, 2, 2), (16, 3, 3, 3), (7, 12), (1, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pattern", ["bernoulli", "exact"])
@pytest.mark.parametrize("seed,layer", [(0, 0), (1234, 5), (-7, 2), (2**63 - 1, 11)])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9, 1.0])
def test_mask_equals_reference(device, shape, pattern, seed, layer, density):
    got = ops.mask(shape, seed, layer, density, pattern, device=device)
    expected = reference_mask(shape, seed, layer, density, pattern)
    assert got.flatten().tolist() == expected


@pytest.mark.parametrize("shape,nm", [((4, 8), (2, 4)), ((16, 3, 3, 3), (1, 3)), ((6, 12), (3, 4)),
                                      ((5, 16), (5, 8)), ((2, 9), (9, 9))])
@pytest.mark.parametrize("seed,layer", [(0, 0), (99, 3)])
def test_nm_mask_equals_reference(device, shape, nm, seed, layer):
    got = ops.mask(shape, seed, layer, 0.5, "nm", nm=nm, device=device)
    assert got.flatten().tolist() == reference_mask(shape, seed, layer, 0.5, "nm", nm=nm)


@pytest.mark.parametrize("density", [0.05, 0.5, 0.9])
def test_bernoulli_density_within_four_sigma(device, density):
    shape = (256, 256, 3, 3)
    numel = math.prod(shape)
    for layer in range(3):
        kept = ops.mask(shape, seed=3, layer=layer, density=density, device=device).sum().item()
        sigma = math.sqrt(numel * density * (1 - density))
        assert abs(kept - density * numel) <= 4 * sigma


@pytest.mark.parametrize("shape", [(7, 7), (3, 5, 1, 1), (129, 3, 3, 3), (256, 256, 3, 3)])
@pytest.mark.parametrize("density", [0.01, 0.25, 0.5, 0.7, 0.999, 1.0])
def test_exact_keeps_round_density_times_numel(device, shape, density):
    numel = math.prod(shape)
    for layer in (0, 4):
        kept = ops.mask(shape, 11, layer, density, "exact", device=device).sum().item()
        assert kept == math.floor(density * numel + 0.5)


@pytest.mark.parametrize("shape,nm", [((64, 32, 3, 3), (2, 4)), ((10, 24), (1, 4)), ((8, 3, 4, 4), (4, 8)),
                                      ((9, 7, 5, 5), (3, 5))])
def test_nm_keeps_exactly_n_per_group_along_reduction(device, shape, nm):
    n, m = nm
    got = ops.mask(shape, 5, 2, 0.5, "nm", nm=nm, device=device)
    groups = got.reshape(shape[0], -1).reshape(shape[0], -1, m)
    assert torch.all(groups.sum(-1) == n)


@pytest.mark.parametrize("pattern", ["bernoulli", "exact", "nm"])
def test_masks_differ_across_layers_and_repeat_across_calls(device, pattern):
    shape = (32, 16, 3, 3)
    masks = [ops.mask(shape, 42, layer, 0.5, pattern, device=device) for layer in range(6)]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert not torch.equal(masks[i], masks[j])
    assert torch.equal(ops.mask(shape, 42, 3, 0.5, pattern, device=device), masks[3])
    assert not torch.equal(ops.mask(shape, 43, 3, 0.5, pattern, device=device), masks[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_mask_dtype_and_values(dtype):
    got = ops.mask((8, 8), 1, 0, 0.5, dtype=dtype)
    assert got.dtype == dtype
    assert set(got.unique().tolist()) <= {0.0, 1.0}


@requires_cuda
@pytest.mark.parametrize("pattern", ["bernoulli", "exact", "nm"])
@pytest.mark.parametrize("shape", [(256, 256, 3, 3), (129, 12, 5, 5), (384, 1536)])  # N:M needs M | in*kh*kw
def test_cpu_and_cuda_masks_are_bit_identical(pattern, shape):
    for layer in range(4):
        cpu = ops.mask(shape, 2026, layer, 0.5, pattern)
        cuda = ops.mask(shape, 2026, layer, 0.5, pattern, device="cuda")
        assert torch.equal(cpu, cuda.cpu())
