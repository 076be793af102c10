"""tied_masked_weights: W ⊙ M_l stacked for every layer, and its fused gradient dW = Σ_l dW_l ⊙ M_l."""

import math

import pytest
import torch

import wtext.ops as ops


def reference_masks(shape, layers, seed, density, pattern, mode, device, nm=(2, 4)):
    """The stacked masks a mode stands for, built from single-layer masks."""
    if mode == "dense":
        return torch.ones((len(layers), *shape), device=device, dtype=torch.float64)
    mask_layers = [0] * len(layers) if mode == "same" else layers
    return torch.stack([ops.mask(shape, seed, layer, density, pattern, nm=nm, device=device, dtype=torch.float64)
                        for layer in mask_layers])


@pytest.mark.parametrize("pattern", ["bernoulli", "exact", "nm"])
@pytest.mark.parametrize("mode", ["dense", "same", "multi"])
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (12, 20), (3, 4, 1, 1)])
def test_forward_and_backward_equal_reference(device, pattern, mode, shape):
    layers = [0, 1, 2, 5, 9]
    weight = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    out = ops.tied_masked_weights(weight, layers, 77, 0.5, pattern, mode)
    masks = reference_masks(shape, layers, 77, 0.5, pattern, mode, device)
    torch.testing.assert_close(out, weight.detach() * masks, rtol=0, atol=0)

    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(weight.grad, (grad * masks).sum(0))


def test_modes_mean_what_they_say(device):
    weight = torch.randn(32, 16, 3, 3, device=device)
    multi = ops.tied_masked_weights(weight, 4, 5, mode="multi")
    same = ops.tied_masked_weights(weight, 4, 5, mode="same")
    dense = ops.tied_masked_weights(weight, 4, 5, mode="dense")
    assert all(not torch.equal(multi[i], multi[j]) for i in range(4) for j in range(i + 1, 4))
    assert all(torch.equal(same[i], same[0]) for i in range(4))
    assert torch.equal(same[0], multi[0])
    assert all(torch.equal(dense[i], weight) for i in range(4))


@pytest.mark.parametrize("weight_dtype,out_dtype", [(torch.float32, torch.bfloat16), (torch.float32, torch.float16),
                                                    (torch.bfloat16, torch.float32), (torch.float64, torch.float32)])
def test_output_dtype_is_written_directly(device, weight_dtype, out_dtype):
    weight = torch.randn(24, 8, 3, 3, device=device, dtype=weight_dtype, requires_grad=True)
    out = ops.tied_masked_weights(weight, 3, 1, 0.5, "exact", dtype=out_dtype)
    assert out.dtype == out_dtype
    masks = reference_masks(weight.shape, [0, 1, 2], 1, 0.5, "exact", "multi", device).to(weight_dtype)
    torch.testing.assert_close(out, (weight.detach() * masks).to(out_dtype), rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    assert weight.grad.dtype == weight_dtype
    expected = (grad.double() * masks.double()).sum(0).to(weight_dtype)
    torch.testing.assert_close(weight.grad, expected)


def test_more_layers_than_one_launch_holds(device):
    layers = list(range(70))  # more than kMaxLayersPerLaunch = 64: processed in two chunks
    weight = torch.randn(6, 8, device=device, dtype=torch.float64, requires_grad=True)
    out = ops.tied_masked_weights(weight, layers, 3, 0.5, "bernoulli")
    masks = reference_masks(weight.shape, layers, 3, 0.5, "bernoulli", "multi", device)
    torch.testing.assert_close(out, weight.detach() * masks, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(weight.grad, (grad * masks).sum(0))


def test_non_contiguous_weight(device):
    base = torch.randn(8, 6, device=device, dtype=torch.float64)
    weight = base.t()  # [6, 8], non-contiguous; masks follow the logical row-major order
    out = ops.tied_masked_weights(weight, 2, 9, 0.5, "nm")
    masks = reference_masks((6, 8), [0, 1], 9, 0.5, "nm", "multi", device)
    torch.testing.assert_close(out, weight * masks, rtol=0, atol=0)


def test_gradcheck(device):
    weight = torch.randn(4, 3, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    for pattern in ("bernoulli", "exact", "nm"):
        assert torch.autograd.gradcheck(
            lambda w: ops.tied_masked_weights(w, [0, 2, 3], 5, 0.6, pattern, nm=(1, 3)), (weight,)
        )


def test_opcheck(device):
    weight = torch.randn(8, 4, 3, 3, device=device, requires_grad=True)
    for args in [
        (weight, [0, 1, 2], 3, 0.5, "bernoulli", 2, 4, "multi", None),
        (weight, [0, 4], 3, 0.5, "exact", 2, 4, "same", torch.bfloat16),
        (weight, [1], 3, 0.5, "nm", 2, 4, "dense", None),
    ]:
        torch.library.opcheck(torch.ops.wtext.tied_masked_weights.default, args)
    grad = torch.randn(3, 8, 4, 3, 3, device=device)
    torch.library.opcheck(torch.ops.wtext.tied_masked_weights_backward.default,
                          (grad, weight.detach(), [0, 1, 2], 3, 0.5, "nm", 2, 4, "multi"))
    torch.library.opcheck(torch.ops.wtext.mask.default, (torch.empty(8, 36, device=device), 1, 2, 0.5, "exact", 2, 4))


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (5, 3, 2, 5), (6, 1, 3, 3), (4, 6, 1, 1)])
@pytest.mark.parametrize("pattern", ["bernoulli", "nm"])
def test_channels_last_weight_gives_channels_last_views(device, shape, pattern):
    # A model moved to channels_last has channels_last 4-d weights: its views come out channels_last (read and
    # written in place by the kernels), with the same values and gradients as from a row-major weight.
    nm = (1, 1) if pattern == "nm" and math.prod(shape[1:]) % 4 else (2, 4)
    weight = torch.randn(shape, device=device)
    weight_cl = weight.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    weight_rm = weight.clone().requires_grad_()
    views_cl = ops.tied_masked_weights(weight_cl, 3, 5, 0.5, pattern, "multi", torch.bfloat16, nm=nm)
    views_rm = ops.tied_masked_weights(weight_rm, 3, 5, 0.5, pattern, "multi", torch.bfloat16, nm=nm)
    assert torch.equal(views_cl, views_rm)
    if shape[1] > 1 and shape[2] * shape[3] > 1:
        assert all(view.is_contiguous(memory_format=torch.channels_last) for view in views_cl.unbind(0))
    grad = torch.randn(views_rm.shape, device=device, dtype=views_rm.dtype)
    views_cl.backward(grad)
    views_rm.backward(grad)
    torch.testing.assert_close(weight_cl.grad, weight_rm.grad)
    # the gradient of channels_last views arrives stacked in their layout (unbind's backward) and is read in place
    grad_cl = torch.empty_like(views_cl).copy_(grad)
    assert grad_cl.stride() == views_cl.stride()
    backward_args = (weight_cl.detach(), [0, 1, 2], 5, 0.5, pattern, *nm, "multi")
    torch.testing.assert_close(torch.ops.wtext.tied_masked_weights_backward(grad_cl, *backward_args),
                               torch.ops.wtext.tied_masked_weights_backward(grad, *backward_args))
    torch.library.opcheck(torch.ops.wtext.tied_masked_weights.default,
                          (weight_cl.detach().clone().requires_grad_(), [0, 2], 5, 0.5, pattern, *nm, "multi", None))


def test_works_under_torch_compile(device):
    weight = torch.randn(8, 4, 3, 3, device=device, requires_grad=True)

    def stacked_sum(w):
        return (ops.tied_masked_weights(w, 4, 11, 0.5, "exact") ** 2).sum()

    compiled = torch.compile(stacked_sum, backend="aot_eager", fullgraph=True)
    expected = stacked_sum(weight)
    (expected_grad,) = torch.autograd.grad(expected, weight)
    got = compiled(weight)
    (got_grad,) = torch.autograd.grad(got, weight)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)


def test_gradgradcheck(device):
    weight = torch.randn(4, 6, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda w: ops.tied_masked_weights(w, 3, 5, 0.5, "exact") ** 2, (weight,))
