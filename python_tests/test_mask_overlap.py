"""Overlapping masks (mask spec version 2): each application carries a fraction of the previous application's
mask over and draws the rest afresh; overlap 0 is plain multi-mask and 1 the same mask everywhere."""

import pytest
import torch

from pure_python_mask import reference_mask
from wtext.nn import MaskSpec
from wtext.nn.mask_overlap import CARRY_LAYER_OFFSET, chain_masks, consecutive_hamming
from wtext.nn.tied_weight import TiedMaskedWeight
from wtext.train import TrainConfig


def tied(shape, applications, **spec):
    return TiedMaskedWeight(shape, applications, MaskSpec(**spec), seed_offset=3)


def chained_by_loop(shape, seed, applications, density, overlap) -> list[list[int]]:
    """The spec's formula element by element, from the pure-Python mask function."""
    masks = [reference_mask(shape, seed, 0, density, "bernoulli")]
    for layer in range(1, applications):
        fresh = reference_mask(shape, seed, layer, density, "bernoulli")
        carry = reference_mask(shape, seed, CARRY_LAYER_OFFSET + layer, overlap, "bernoulli")
        masks.append([previous if c else f for previous, c, f in zip(masks[-1], carry, fresh)])
    return masks


@pytest.mark.parametrize("overlap", [0.3, 0.75])
def test_masks_follow_the_spec_element_by_element(overlap):
    weight = tied((7, 5, 3), 4, density=0.4, overlap=overlap)
    expected = torch.tensor(chained_by_loop((7, 5, 3), weight.seed, 4, 0.4, overlap), dtype=torch.float32)
    assert torch.equal(weight.application_masks().flatten(1), expected)
    assert torch.equal(weight.application_masks(reference=True).flatten(1), expected)


def test_overlap_zero_is_multi_and_overlap_one_is_same():
    multi = tied((16, 8, 3, 3), 5, density=0.5)
    assert torch.equal(tied((16, 8, 3, 3), 5, density=0.5, overlap=0.0).application_masks(),
                       multi.application_masks())
    # The chained path with coins that never carry (threshold 0) draws every mask afresh: plain multi-mask.
    assert torch.equal(tied((16, 8, 3, 3), 5, density=0.5, overlap=1e-12).application_masks(),
                       multi.application_masks())
    fresh = multi.application_masks()
    assert torch.equal(chain_masks(fresh, torch.zeros_like(fresh)), fresh)
    same = tied((16, 8, 3, 3), 5, density=0.5, mode="same").application_masks()
    full = tied((16, 8, 3, 3), 5, density=0.5, overlap=1.0).application_masks()
    assert torch.equal(full, same.expand_as(full))


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.9])
def test_density_and_hamming_distance_match_their_expectation(overlap):
    masks = tied((128, 64, 3, 3), 4, density=0.3, overlap=overlap).application_masks()
    assert masks.mean(dim=tuple(range(1, masks.dim()))).sub(0.3).abs().max() < 0.01
    assert abs(consecutive_hamming(masks) - (1 - overlap) * 2 * 0.3 * 0.7) < 0.01


def test_chain_takes_the_last_own_draw():
    fresh = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    carry = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # element 0: own at 0, carried at 1 and 2, own at 3; element 1: own at 0 (C_0 unused), own at 1, carried after
    assert chain_masks(fresh, carry).tolist() == [[1, 0], [1, 1], [1, 1], [0, 1]]


def test_forward_applies_the_masks_and_the_gradient_sums_them():
    weight = tied((6, 4, 3, 3), 3, density=0.5, overlap=0.5)
    views = weight()
    masks = weight.application_masks()
    assert torch.equal(views, weight.weight.unsqueeze(0) * masks)
    views.sum().backward()
    assert torch.equal(weight.weight.grad, masks.sum(0))


@pytest.mark.parametrize("spec, message", [
    (dict(overlap=1.5), r"mask overlap must be a number in \[0, 1\]; got overlap=1.5"),
    (dict(overlap=-0.1), r"mask overlap must be a number in \[0, 1\]"),
    (dict(overlap="half"), r"mask overlap must be a number in \[0, 1\]; got overlap='half'"),
    (dict(overlap=0.5, pattern="exact"), "mask overlap > 0 needs mode 'multi' and pattern 'bernoulli'"),
    (dict(overlap=0.5, mode="same"), "mask overlap > 0 needs mode 'multi' and pattern 'bernoulli'"),
])
def test_bad_overlap_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        MaskSpec(**spec)


def test_train_config_checks_the_overlap():
    with pytest.raises(ValueError, match=r"mask_overlap must be in \[0, 1\]; got mask_overlap=2"):
        TrainConfig(mask_overlap=2.0)
    with pytest.raises(ValueError, match="mask_overlap > 0 needs mask_mode multi and pattern bernoulli"):
        TrainConfig(mask_overlap=0.5, pattern="nm")
