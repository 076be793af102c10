"""masked_conv2d and masked_linear against PyTorch's conv2d/linear on W ⊙ M, forward and backward."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import wtext.ops as ops

PATTERN_CASES = [("bernoulli", (2, 4)), ("exact", (2, 4)), ("nm", (1, 1))]


def effective(weight, seed, layer, density, pattern, nm):
    return weight * ops.mask(weight.shape, seed, layer, density, pattern, nm=nm, device=weight.device,
                             dtype=weight.dtype)


def conv_case(device, channels, out_channels, kernel, size, dtype=torch.float64, channels_last=False):
    x = torch.randn(2, channels, size, size, device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out_channels, channels, kernel, kernel, device=device, dtype=dtype)
    bias = torch.randn(out_channels, device=device, dtype=dtype)
    return x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()


def check_against_reference(ours, reference, inputs, rtol=None, atol=None):
    out = ours(*inputs)
    expected = reference(*inputs)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    grad = torch.randn_like(expected)
    got_grads = torch.autograd.grad(out, inputs, grad)
    expected_grads = torch.autograd.grad(expected, inputs, grad)
    for got, want in zip(got_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    return out


@pytest.mark.parametrize("channels", [1, 3, 7, 129])
@pytest.mark.parametrize("kernel,size,stride,padding,dilation", [
    (1, 5, 1, 0, 1), (3, 8, 1, 1, 1), (5, 9, 2, 2, 1), (3, 1, 1, 1, 1), (3, 11, 2, 2, 2),
])
@pytest.mark.parametrize("pattern,nm", PATTERN_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_masked_conv2d_equals_conv_of_masked_weight(device, channels, kernel, size, stride, padding, dilation,
                                                    pattern, nm, channels_last):
    # channels_last x makes the masked weight be written, and its gradient read, in channels_last order through
    # the kernels' index map (stored_offset / logical_index in csrc/mask/mask_plan.h).
    x, weight, bias = conv_case(device, channels, 5, kernel, size, channels_last=channels_last)

    def ours(x, weight, bias):
        return ops.masked_conv2d(x, weight, bias, 21, 3, 0.5, pattern, stride, padding, dilation, nm=nm)

    def reference(x, weight, bias):
        return F.conv2d(x, effective(weight, 21, 3, 0.5, pattern, nm), bias, stride, padding, dilation)

    check_against_reference(ours, reference, (x, weight, bias))


@pytest.mark.parametrize("channels,size", [(3, 8), (16, 6), (7, 1)])
def test_masked_conv2d_channels_last_and_non_contiguous(device, channels, size):
    x, weight, bias = conv_case(device, channels, 8, 3, size, dtype=torch.float32, channels_last=True)

    def ours(x, weight, bias):
        return ops.masked_conv2d(x, weight, bias, 2, 1, 0.5, "exact", 1, 1)

    def reference(x, weight, bias):
        return F.conv2d(x, effective(weight, 2, 1, 0.5, "exact", (2, 4)), bias, 1, 1)

    out = check_against_reference(ours, reference, (x, weight, bias), rtol=1e-4, atol=1e-4)
    if size > 1 and channels > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)

    # A non-contiguous view of x (every other column).
    wide = torch.randn(2, channels, size, 2 * size, device=device, requires_grad=True)
    x_view = wide[..., ::2]
    torch.testing.assert_close(ours(x_view, weight, bias), reference(x_view, weight, bias), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pattern,nm", PATTERN_CASES)
@pytest.mark.parametrize("x_shape", [(5, 12), (2, 3, 12), (1, 12)])
def test_masked_linear_equals_linear_of_masked_weight(device, pattern, nm, x_shape):
    x = torch.randn(x_shape, device=device, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 12, device=device, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, device=device, dtype=torch.float64, requires_grad=True)

    def ours(x, weight, bias):
        return ops.masked_linear(x, weight, bias, 4, 2, 0.9, pattern, nm=nm)

    def reference(x, weight, bias):
        return F.linear(x, effective(weight, 4, 2, 0.9, pattern, nm), bias)

    check_against_reference(ours, reference, (x, weight, bias))


def test_linear_without_bias_and_non_contiguous_input(device):
    x = torch.randn(12, 6, device=device, dtype=torch.float64).t().requires_grad_()  # [6, 12], non-contiguous
    weight = torch.randn(5, 12, device=device, dtype=torch.float64, requires_grad=True)
    check_against_reference(lambda x, w: ops.masked_linear(x, w, None, 1, 0, 0.5),
                            lambda x, w: F.linear(x, effective(w, 1, 0, 0.5, "bernoulli", (2, 4))), (x, weight))


@pytest.mark.parametrize("activation_dtype", [torch.bfloat16, torch.float16])
def test_float32_master_weight_with_low_precision_activations(device, activation_dtype):
    if device.type == "cpu" and activation_dtype == torch.float16:
        pytest.skip("float16 convolution is a CUDA case")
    x = torch.randn(2, 8, 6, 6, device=device, dtype=activation_dtype, requires_grad=True)
    weight = torch.randn(4, 8, 3, 3, device=device, requires_grad=True)
    bias = torch.randn(4, device=device, requires_grad=True)
    out = ops.masked_conv2d(x, weight, bias, 3, 0, 0.5, padding=1)
    assert out.dtype == activation_dtype
    w_eff = effective(weight.detach(), 3, 0, 0.5, "bernoulli", (2, 4))
    expected = F.conv2d(x.detach().float(), w_eff.to(activation_dtype).float(), bias.detach(), padding=1)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=5e-2)
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32 and bias.grad.dtype == torch.float32
    assert x.grad.dtype == activation_dtype
    mask = ops.mask(weight.shape, 3, 0, 0.5, device=device)
    assert torch.all(weight.grad[mask == 0] == 0)


def test_gradcheck_conv_and_linear(device):
    x, weight, bias = conv_case(device, 3, 4, 3, 5)
    assert torch.autograd.gradcheck(
        lambda x, w, b: ops.masked_conv2d(x, w, b, 1, 2, 0.5, "exact", 2, 1), (x, weight, bias))
    x = torch.randn(3, 8, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.masked_linear(x, w, b, 1, 2, 0.5, "nm"), (x, w, b))


def test_opcheck_conv_and_linear(device):
    for channels_last in (False, True):
        x, weight, bias = conv_case(device, 4, 6, 3, 7, dtype=torch.float32, channels_last=channels_last)
        torch.library.opcheck(torch.ops.wtext.masked_conv2d.default,
                              (x, weight, bias, 1, 0, 0.5, "bernoulli", 2, 4, [1, 1], [1, 1], [1, 1]))
        torch.library.opcheck(torch.ops.wtext.masked_conv2d.default,
                              (x, weight, None, 1, 3, 0.5, "nm", 2, 4, [2, 2], [0, 0], [1, 1]))
        # the forward the autograd kernel runs when x needs a gradient; not differentiable itself: no input needs grad
        conv_args = (x.detach(), weight.detach(), bias.detach(), 1, 0, 0.5, "exact", 2, 4, [1, 1], [1, 1], [1, 1])
        torch.library.opcheck(torch.ops.wtext.masked_conv2d_forward.default, conv_args)
        _, masked_weight = torch.ops.wtext.masked_conv2d_forward(*conv_args)
        grad_out = torch.randn(2, 6, 7, 7, device=device)
        for output_mask in OUTPUT_MASKS:
            for kept in (None, masked_weight):
                torch.library.opcheck(torch.ops.wtext.masked_conv2d_backward.default,
                                      (grad_out, x.detach(), weight.detach(), kept, 1, 0, 0.5, "exact", 2, 4, [1, 1],
                                       [1, 1], [1, 1], output_mask))
    x = torch.randn(2, 3, 8, device=device, requires_grad=True)
    w = torch.randn(4, 8, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.wtext.masked_linear.default, (x, w, b, 5, 1, 0.9, "bernoulli", 2, 4))
    linear_args = (x.detach(), w.detach(), b.detach(), 5, 1, 0.9, "exact", 2, 4)
    torch.library.opcheck(torch.ops.wtext.masked_linear_forward.default, linear_args)
    _, masked_weight = torch.ops.wtext.masked_linear_forward(*linear_args)
    for output_mask in OUTPUT_MASKS:
        for kept in (None, masked_weight):
            torch.library.opcheck(torch.ops.wtext.masked_linear_backward.default,
                                  (torch.randn(2, 3, 4, device=device), x.detach(), w.detach(), kept, 5, 1, 0.9,
                                   "exact", 2, 4, output_mask))


OUTPUT_MASKS = ([True, True], [True, False], [False, True])


class BackwardCalls(TorchDispatchMode):
    """Records the output_mask and the masked_weight argument of every masked layer backward op call."""

    def __init__(self):
        super().__init__()
        self.masks = []
        self.masked_weights = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.wtext.masked_conv2d_backward.default, torch.ops.wtext.masked_linear_backward.default):
            self.masks.append(list(args[-1]))
            self.masked_weights.append(args[3])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("wanted", ["x", "weight", "both"])
def test_backward_computes_only_the_requested_gradients(device, wanted):
    # A DEQ's adjoint solve differentiates the cell w.r.t. its state only; a frozen weight needs no gradient. The
    # autograd asks the backward op for exactly those, and the op returns None for the others (its GEMM never runs).
    x, weight, _ = conv_case(device, 3, 4, 3, 6)
    x_lin = torch.randn(5, 8, device=device, dtype=torch.float64, requires_grad=True)
    w_lin = torch.randn(3, 8, device=device, dtype=torch.float64, requires_grad=True)
    layers = [(lambda x, w: ops.masked_conv2d(x, w, None, 3, 1, 0.5, padding=1),
               lambda x, w: F.conv2d(x, effective(w, 3, 1, 0.5, "bernoulli", (2, 4)), padding=1), x, weight),
              (lambda x, w: ops.masked_linear(x, w, None, 3, 1, 0.5),
               lambda x, w: F.linear(x, effective(w, 3, 1, 0.5, "bernoulli", (2, 4))), x_lin, w_lin)]
    expected_mask = {"x": [True, False], "weight": [False, True], "both": [True, True]}[wanted]
    for ours, reference, x, weight in layers:
        inputs = {"x": (x,), "weight": (weight,), "both": (x, weight)}[wanted]
        out = ours(x, weight)
        probe = torch.randn_like(out)
        with BackwardCalls() as recorded:
            got = torch.autograd.grad(out, inputs, probe)
        assert recorded.masks == [expected_mask]
        for g, e in zip(got, torch.autograd.grad(reference(x, weight), inputs, probe)):
            torch.testing.assert_close(g, e)


@contextlib.contextmanager
def uninitialized_memory_filled():
    """Uninitialized tensors (at::empty) come back NaN-filled, so a kernel that reads one shows in its result."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


def test_backward_op_returns_none_for_gradients_not_asked_for(device):
    x, weight, _ = conv_case(device, 3, 4, 3, 6)
    grad_out = torch.randn(2, 4, 6, 6, device=device, dtype=torch.float64)
    args = (grad_out, x.detach(), weight.detach(), None, 3, 1, 0.5, "exact", 2, 4, [1, 1], [1, 1], [1, 1])
    both = torch.ops.wtext.masked_conv2d_backward(*args, [True, True])
    only_x = torch.ops.wtext.masked_conv2d_backward(*args, [True, False])
    # A weight-only backward hands the convolution an uninitialized stand-in for W ⊙ M (only its shape and layout
    # count); filled with NaN, it must not reach the gradient. (Without the fill, the allocator could hand back the
    # block of the masked weight just freed, still holding W ⊙ M, and a backend reading it would go unnoticed.)
    with uninitialized_memory_filled():
        only_weight = torch.ops.wtext.masked_conv2d_backward(*args, [False, True])
    assert only_x[1] is None and only_weight[0] is None
    assert torch.ops.wtext.masked_conv2d_backward(*args, [False, False]) == (None, None)
    torch.testing.assert_close(only_x[0], both[0])
    torch.testing.assert_close(only_weight[1], both[1])
    x_lin, w_lin = torch.randn(5, 8, device=device), torch.randn(3, 8, device=device)
    args = (torch.randn(5, 3, device=device), x_lin, w_lin, None, 3, 1, 0.5, "nm", 2, 4)
    both = torch.ops.wtext.masked_linear_backward(*args, [True, True])
    only_x = torch.ops.wtext.masked_linear_backward(*args, [True, False])
    only_weight = torch.ops.wtext.masked_linear_backward(*args, [False, True])
    assert only_x[1] is None and only_weight[0] is None
    torch.testing.assert_close(only_x[0], both[0])
    torch.testing.assert_close(only_weight[1], both[1])


def kept_weight_cases(device, case):
    """(layer, x, weight, expected layout of the kept masked weight) for a conv, a channels_last conv, a linear."""
    if case == "linear":
        return (lambda x, w: ops.masked_linear(x, w, None, 3, 1, 0.5, "exact"), torch.randn(5, 8, device=device),
                torch.randn(3, 8, device=device), torch.contiguous_format)
    channels_last = case == "conv_channels_last"
    x, weight, _ = conv_case(device, 3, 4, 3, 6, dtype=torch.float32, channels_last=channels_last)
    return (lambda x, w: ops.masked_conv2d(x, w, None, 3, 1, 0.5, "exact", padding=1), x.detach(), weight.detach(),
            torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("wanted", ["x", "weight", "both"])
@pytest.mark.parametrize("case", ["conv", "conv_channels_last", "linear"])
def test_backward_reuses_the_masked_weight_of_the_forward(device, wanted, case):
    # Only the grad_x GEMM reads W ⊙ M. When x needs a gradient the forward keeps the masked weight it computed (in
    # x's dtype and layout) and hands it to the backward op, which then runs no mask kernel for it; when x is frozen
    # nothing is kept, so no weight-sized tensor waits for the backward.
    layer, x, weight, layout = kept_weight_cases(device, case)
    x.requires_grad_(wanted != "weight")
    weight.requires_grad_(wanted != "x")
    out = layer(x, weight)
    with BackwardCalls() as recorded:
        out.backward(torch.randn_like(out))
    (kept,) = recorded.masked_weights
    if wanted == "weight":
        assert kept is None
    else:
        torch.testing.assert_close(kept, effective(weight.detach(), 3, 1, 0.5, "exact", (2, 4)), rtol=0, atol=0)
        assert kept.is_contiguous(memory_format=layout)


def test_a_large_weight_is_kept_only_when_x_is_larger(device):
    # The kept W ⊙ M must not outweigh what the layer saves anyway (x): a wide linear layer (over 2^20 weights, the
    # size kept regardless) fed a few rows regenerates the masked weight instead, with the same gradients; fed as
    # many elements as its weight has, it keeps it.
    weight = torch.randn(1025, 1024, device=device, requires_grad=True)
    for rows, keeps in ((2, False), (1025, True)):
        x = torch.randn(rows, 1024, device=device, requires_grad=True)
        out = ops.masked_linear(x, weight, None, 3, 1, 0.5)
        probe = torch.randn_like(out)
        with BackwardCalls() as recorded:
            got = torch.autograd.grad(out, (x, weight), probe)
        (kept,) = recorded.masked_weights
        assert (kept is not None) == keeps
        expected = F.linear(x, effective(weight, 3, 1, 0.5, "bernoulli", (2, 4)))
        for g, e in zip(got, torch.autograd.grad(expected, (x, weight), probe)):
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize("case", ["conv", "linear"])
def test_modifying_the_weight_in_place_before_the_backward_is_caught(device, case):
    # The backward reads the kept W ⊙ M, not the weight, but a weight changed after the forward must still be an
    # error, as for F.conv2d, not a gradient of the old weight taken silently.
    layer, x, weight, _ = kept_weight_cases(device, case)
    x.requires_grad_()
    weight.requires_grad_()
    out = layer(x, weight)
    with torch.no_grad():
        weight.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward(torch.randn_like(out))


def test_the_internal_forward_ops_refuse_to_be_differentiated(device):
    # masked_conv2d_forward / masked_linear_forward serve the autograd kernels, below autograd; called directly with
    # inputs that need gradients they must fail loudly rather than drop the weight's gradient.
    x, weight, bias = conv_case(device, 3, 4, 3, 6)
    out, _ = torch.ops.wtext.masked_conv2d_forward(x, weight, bias, 3, 1, 0.5, "exact", 2, 4, [1, 1], [1, 1],
                                                   [1, 1])
    with pytest.raises(RuntimeError, match="masked_conv2d_forward"):
        out.sum().backward()
    x_lin = torch.randn(5, 8, device=device, requires_grad=True)
    w_lin = torch.randn(3, 8, device=device, requires_grad=True)
    out, _ = torch.ops.wtext.masked_linear_forward(x_lin, w_lin, None, 3, 1, 0.5, "exact", 2, 4)
    with pytest.raises(RuntimeError, match="masked_linear_forward"):
        out.sum().backward()


def test_backward_op_uses_the_masked_weight_it_is_given(device):
    # The op trusts masked_weight to be W ⊙ M (it is a cache, not checked against the mask): given twice that, grad_x
    # doubles, and grad_weight, which never reads it, does not change.
    x, weight, _ = conv_case(device, 3, 4, 3, 6, channels_last=True)
    x, weight = x.detach(), weight.detach()
    masked = effective(weight, 3, 1, 0.5, "exact", (2, 4)).contiguous(memory_format=torch.channels_last)
    tail = (3, 1, 0.5, "exact", 2, 4, [1, 1], [1, 1], [1, 1], [True, True])
    grad_out = torch.randn(2, 4, 6, 6, device=device, dtype=torch.float64)
    regenerated = torch.ops.wtext.masked_conv2d_backward(grad_out, x, weight, None, *tail)
    given = torch.ops.wtext.masked_conv2d_backward(grad_out, x, weight, 2 * masked, *tail)
    torch.testing.assert_close(given[0], 2 * regenerated[0])
    torch.testing.assert_close(given[1], regenerated[1])
    x_lin, w_lin = torch.randn(5, 8, device=device), torch.randn(3, 8, device=device)
    masked_lin = effective(w_lin, 3, 1, 0.5, "nm", (2, 4))
    tail = (3, 1, 0.5, "nm", 2, 4, [True, True])
    grad_out = torch.randn(5, 3, device=device)
    regenerated = torch.ops.wtext.masked_linear_backward(grad_out, x_lin, w_lin, None, *tail)
    given = torch.ops.wtext.masked_linear_backward(grad_out, x_lin, w_lin, 2 * masked_lin, *tail)
    torch.testing.assert_close(given[0], 2 * regenerated[0])
    torch.testing.assert_close(given[1], regenerated[1])


@pytest.mark.parametrize("compiled", [False, True])
def test_autocast_runs_the_layers_in_the_autocast_dtype(device, compiled):
    # Like F.conv2d / F.linear: inside autocast a float32 x is cast (the masked weight is then written in bf16 by
    # the mask kernel), gradients reach the float32 x and weight; float64 is left alone.
    x, weight, bias = conv_case(device, 4, 5, 3, 6, dtype=torch.float32)
    x_lin = torch.randn(3, 4, device=device, requires_grad=True)
    w_lin = torch.randn(2, 4, device=device, requires_grad=True)

    def layers(x, weight, bias, x_lin, w_lin):
        conv = ops.masked_conv2d(x, weight, bias, 1, 0, 0.5, padding=1)
        return conv, ops.masked_linear(x_lin, w_lin, None, 1, 0, 0.5)

    run = torch.compile(layers, backend="aot_eager", fullgraph=True) if compiled else layers
    inputs = (x, weight, bias, x_lin, w_lin)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = run(*inputs)
    expected = layers(x.bfloat16(), weight, bias, x_lin.bfloat16(), w_lin)  # the cast written out by hand
    probes = [torch.randn_like(out) for out in expected]
    for g, e in zip(got, expected):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g, e)
    got_grads = torch.autograd.grad(got, inputs, probes)
    for g, e, tensor in zip(got_grads, torch.autograd.grad(expected, inputs, probes), inputs):
        assert g.dtype == tensor.dtype == torch.float32
        torch.testing.assert_close(g, e)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        assert ops.masked_conv2d(x.double(), weight.double(), None, 1, 0, 0.5).dtype == torch.float64
    assert layers(*inputs)[0].dtype == torch.float32  # outside autocast nothing changes


def test_conv_and_linear_under_torch_compile(device):
    x, weight, bias = conv_case(device, 4, 4, 3, 6, dtype=torch.float32)
    w_lin = torch.randn(3, 4, device=device, requires_grad=True)

    def net(x, weight, bias, w_lin):
        z = x
        for layer in range(3):  # one shared weight, a mask per application
            z = torch.relu(ops.masked_conv2d(z, weight, bias, 9, layer, 0.5, "exact", 1, 1))
        return ops.masked_linear(z.mean((2, 3)), w_lin, None, 9, 0, 0.5).sum()

    inputs = (x, weight, bias, w_lin)
    expected = net(*inputs)
    expected_grads = torch.autograd.grad(expected, inputs)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    torch.testing.assert_close(got, expected)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_double_backward_conv_and_linear(device):
    # Second derivatives are needed by Jacobian regularizers (Hutchinson estimates of ||J||_F through the cell).
    x, weight, bias = conv_case(device, 3, 4, 3, 5)
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: ops.masked_conv2d(x, w, b, 1, 2, 0.5, "exact", 1, 1), (x, weight, bias))
    x = torch.randn(3, 8, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: ops.masked_linear(x, w, None, 1, 2, 0.5, "nm"), (x, w))


def test_vector_jacobian_product_with_create_graph(device):
    x, weight, _ = conv_case(device, 4, 4, 3, 6)
    probe = torch.randn(2, 4, 6, 6, device=device, dtype=torch.float64)

    def jacobian_penalty(conv):
        out = conv(x, weight)
        (vjp,) = torch.autograd.grad(out, x, probe, create_graph=True)
        (grad_weight,) = torch.autograd.grad((vjp ** 2).sum(), weight)
        return grad_weight

    ours = jacobian_penalty(lambda x, w: ops.masked_conv2d(x, w, None, 3, 1, 0.5, padding=1))
    reference = jacobian_penalty(lambda x, w: F.conv2d(x, effective(w, 3, 1, 0.5, "bernoulli", (2, 4)), padding=1))
    torch.testing.assert_close(ours, reference)


def test_inductor_compiles_a_tied_masked_net():
    # The default torch.compile backend (Inductor) treats the ops as opaque calls and must reproduce eager results.
    x, weight, bias = conv_case("cpu", 4, 4, 3, 6, dtype=torch.float32)

    def net(x, weight, bias):
        stacked = ops.tied_masked_weights(weight, 3, 9, 0.5, "exact")
        z = x
        for layer in range(3):
            z = torch.relu(z + ops.masked_conv2d(z, weight, bias, 9, layer, 0.5, "exact", 1, 1))
        return z.square().mean() + stacked.square().mean()

    inputs = (x, weight, bias)
    expected = net(*inputs)
    expected_grads = torch.autograd.grad(expected, inputs)
    got = torch.compile(net, fullgraph=True)(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    torch.testing.assert_close(got, expected)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
