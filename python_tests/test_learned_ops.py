"""The learned-mask ops (learned_mask_thresholds, learned_masked_weights and the packed masks of a frozen checkpoint)
against their plain-PyTorch specification, wtext/nn/learned_reference.py and wtext/nn/packed_masks.py."""

import math

import pytest
import torch

import wtext.ops as ops
from wtext import _C
from wtext.nn import learned_reference as reference
from wtext.nn.packed_masks import pack_masks, packed_bytes, unpack_masks

from conftest import requires_cuda

# numel not a multiple of 8 or 32 (135, 7, 387), one 4-d weight whose numel is, and a linear weight
SHAPES = [(3, 5, 3, 3), (7, 1), (129, 3), (8, 4, 3, 3)]


def random_scores(applications, shape, device, ties=False):
    """float32 scores [L, *shape]; with `ties`, a handful of distinct values (both zeros among them), so most scores
    are equal to many others."""
    if ties:
        values = torch.tensor([-1.5, -0.0, 0.0, 0.25, 2.0], device=device)
        return values[torch.randint(0, len(values), (applications, *shape), device=device)]
    return torch.randn((applications, *shape), device=device)


def assert_identical(got, expected):
    """Equal values, dtype and shape, and every zero of got is +0 (dropped entries are selected away, never
    multiplied: the reference's W * 0 may give -0)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)
    assert not torch.signbit(got[got == 0]).any()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("applications", [1, 3, 6, 70])
@pytest.mark.parametrize("ties", [False, True])
def test_thresholds_equal_the_reference(device, shape, applications, ties):
    scores = random_scores(applications, shape, device, ties)
    numel = math.prod(shape)
    for kept in sorted({0, 1, numel // 3, reference.kept_count(0.5, numel), numel - 1, numel}):
        got = ops.learned_mask_thresholds(scores, kept)
        assert got.dtype == torch.int64 and got.device == scores.device
        assert torch.equal(got, reference.thresholds(scores, kept)), kept


@pytest.mark.parametrize("ties", [False, True])
def test_the_aten_thresholds_kernel_equals_the_reference(ties):
    # The thresholds op has two kernels: the CPU's own selection, and ATen ops (keys, kthvalue) for every other
    # device, registered as CompositeExplicitAutograd. The second is called here directly, so a CPU run checks it
    # too.
    composite = torch._C.DispatchKey.CompositeExplicitAutograd
    for shape in SHAPES:
        scores = random_scores(5, shape, "cpu", ties)
        numel = math.prod(shape)
        for kept in (0, 1, numel // 2, numel):
            got = torch.ops.wtext.learned_mask_thresholds.default._op_dk(composite, scores, kept)
            assert torch.equal(got, reference.thresholds(scores, kept))
    with pytest.raises(RuntimeError, match=r"kept=49"):
        torch.ops.wtext.learned_mask_thresholds.default._op_dk(composite, torch.randn(2, 6, 8), 49)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("applications", [1, 3, 6, 70])
@pytest.mark.parametrize("weight_dtype,out_dtype", [(torch.float32, None), (torch.float64, None),
                                                    (torch.float32, torch.bfloat16), (torch.float64, torch.float32),
                                                    (torch.bfloat16, torch.float32)])
def test_forward_equals_the_reference_bit_for_bit(device, shape, applications, weight_dtype, out_dtype):
    weight = torch.randn(shape, device=device, dtype=weight_dtype)
    scores = random_scores(applications, shape, device)
    thresholds = ops.learned_mask_thresholds(scores, reference.kept_count(0.4, weight.numel()))
    got = ops.learned_masked_weights(weight, scores, thresholds, out_dtype)
    assert_identical(got, reference.learned_masked_weights(weight, scores, thresholds, out_dtype))


@pytest.mark.parametrize("shape", SHAPES)
def test_ties_keep_exactly_kept_entries_with_the_smaller_indices_first(device, shape):
    numel = math.prod(shape)
    scores = random_scores(6, shape, device, ties=True)
    weight = torch.randn(shape, device=device) + 5.0  # no zero weights: a zero of the views is a dropped entry
    for kept in (0, 1, numel // 2, numel - 1, numel):
        views = ops.learned_masked_weights(weight, scores, ops.learned_mask_thresholds(scores, kept))
        kept_flat = (views != 0).flatten(1)
        assert kept_flat.sum(1).tolist() == [kept] * 6
        # Among the scores equal to the smallest kept score, the kept ones precede the dropped ones by index.
        flat = scores.flatten(1)
        for row in range(6):
            if 0 < kept < numel:
                ordered = flat[row].view(torch.int32).to(torch.int64)
                ordered = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
                boundary = ordered[kept_flat[row]].min()
                tied = torch.nonzero(ordered == boundary).flatten()
                tied_kept = kept_flat[row][tied]
                assert not (tied_kept[1:] & ~tied_kept[:-1]).any()  # kept ones first, then dropped ones


def test_kept_zero_keeps_nothing_and_numel_keeps_everything(device):
    weight = torch.randn(5, 7, device=device)
    scores = torch.randn(3, 5, 7, device=device)
    none = ops.learned_mask_thresholds(scores, 0)
    assert none.tolist() == [reference.INT64_MAX] * 3
    assert_identical(ops.learned_masked_weights(weight, scores, none), torch.zeros(3, 5, 7, device=device))
    every = ops.learned_masked_weights(weight, scores, ops.learned_mask_thresholds(scores, 35))
    assert torch.equal(every, weight.expand(3, 5, 7))


def test_dropped_inf_and_nan_weights_give_positive_zero(device):
    weight = torch.tensor([[float("inf"), float("nan")], [-float("inf"), -3.0]], device=device)
    scores = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[4.0, 3.0], [2.0, 1.0]]], device=device)
    views = ops.learned_masked_weights(weight, scores, ops.learned_mask_thresholds(scores, 2))
    assert torch.equal(views[0], torch.tensor([[0.0, 0.0], [-float("inf"), -3.0]], device=device))
    assert not torch.signbit(views[0, 0]).any()
    assert torch.isinf(views[1, 0, 0]) and torch.isnan(views[1, 0, 1]) and (views[1, 1] == 0).all()
    bits = pack_masks(torch.tensor([[[False, False], [True, False]]], device=device))
    packed = ops.packed_masked_weights(weight, bits)
    assert torch.equal(packed[0], torch.tensor([[0.0, 0.0], [-float("inf"), 0.0]], device=device))
    assert not torch.signbit(packed[0, 0]).any() and not torch.signbit(packed[0, 1, 1])


def reference_gradients(weight, scores, thresholds, grad, dtype=None):
    weight = weight.detach().clone().requires_grad_()
    scores = scores.detach().clone().requires_grad_()
    reference.learned_masked_weights(weight, scores, thresholds, dtype).backward(grad)
    return weight.grad, scores.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("applications", [1, 3, 70])
@pytest.mark.parametrize("weight_dtype,out_dtype", [(torch.float64, None), (torch.float32, None),
                                                    (torch.float32, torch.bfloat16)])
def test_gradients_equal_the_reference(device, shape, applications, weight_dtype, out_dtype):
    weight = torch.randn(shape, device=device, dtype=weight_dtype, requires_grad=True)
    scores = random_scores(applications, shape, device).requires_grad_()
    thresholds = ops.learned_mask_thresholds(scores, reference.kept_count(0.5, weight.numel()))
    views = ops.learned_masked_weights(weight, scores, thresholds, out_dtype)
    grad = torch.randn_like(views)
    views.backward(grad)
    expected_weight, expected_scores = reference_gradients(weight, scores, thresholds, grad, out_dtype)
    assert weight.grad.dtype == weight_dtype and scores.grad.dtype == torch.float32
    assert weight.grad.is_contiguous() and scores.grad.is_contiguous()
    # dS = g * W is one product, the same in both; dW sums over the applications, in another order.
    torch.testing.assert_close(scores.grad, expected_scores, rtol=0, atol=0)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5}[weight_dtype]
    torch.testing.assert_close(weight.grad, expected_weight, rtol=tolerance, atol=tolerance * applications)


def test_only_the_asked_gradients_are_computed(device):
    weight = torch.randn(6, 4, 3, 3, device=device, dtype=torch.float64)
    scores = torch.randn(3, 6, 4, 3, 3, device=device)
    thresholds = ops.learned_mask_thresholds(scores, 100)
    grad = torch.randn(3, 6, 4, 3, 3, device=device, dtype=torch.float64)
    both = torch.ops.wtext.learned_masked_weights_backward(grad, weight, scores, thresholds, [True, True])
    weight_only = torch.ops.wtext.learned_masked_weights_backward(grad, weight, scores, thresholds, [True, False])
    scores_only = torch.ops.wtext.learned_masked_weights_backward(grad, weight, scores, thresholds, [False, True])
    neither = torch.ops.wtext.learned_masked_weights_backward(grad, weight, scores, thresholds, [False, False])
    assert weight_only[1] is None and scores_only[0] is None and neither == (None, None)
    assert torch.equal(weight_only[0], both[0]) and torch.equal(scores_only[1], both[1])
    # through autograd: a frozen weight trains its scores alone, fixed scores their weight alone
    scores.requires_grad_()
    (score_grad,) = torch.autograd.grad(ops.learned_masked_weights(weight, scores, thresholds), scores, grad)
    assert torch.equal(score_grad, both[1])


def test_gradcheck_in_the_weight():
    # The scores' gradient is straight-through, not the derivative of the (piecewise constant) mask: it is checked
    # against the reference above, not numerically.
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    scores = torch.randn(5, 4, 3, 3, 3)
    thresholds = ops.learned_mask_thresholds(scores, 50)
    assert torch.autograd.gradcheck(lambda w: ops.learned_masked_weights(w, scores, thresholds), (weight,))
    assert torch.autograd.gradgradcheck(lambda w: ops.learned_masked_weights(w, scores, thresholds) ** 2, (weight,))
    bits = pack_masks(torch.rand(5, 4, 3, 3, 3) < 0.5)
    assert torch.autograd.gradcheck(lambda w: ops.packed_masked_weights(w, bits), (weight,))
    assert torch.autograd.gradgradcheck(lambda w: ops.packed_masked_weights(w, bits) ** 2, (weight,))


def test_double_backward_of_the_learned_backward(device):
    # grad_weight = sum_l M_l ⊙ g_l and grad_scores = g ⊙ W: linear in g, bilinear in (g, W).
    weight = torch.randn(5, 6, device=device, dtype=torch.float64, requires_grad=True)
    scores = torch.randn(3, 5, 6, device=device)
    thresholds = ops.learned_mask_thresholds(scores, 13)
    grad = torch.randn(3, 5, 6, device=device, dtype=torch.float64, requires_grad=True)
    grad_weight, grad_scores = torch.ops.wtext.learned_masked_weights_backward(grad, weight, scores, thresholds,
                                                                               [True, True])
    gg_weight = torch.randn_like(grad_weight)
    gg_scores = torch.randn_like(grad_scores)
    d_grad, d_weight = torch.autograd.grad((grad_weight, grad_scores), (grad, weight), (gg_weight, gg_scores))
    masks = reference.learned_masks(scores, thresholds).to(torch.float64)
    torch.testing.assert_close(d_grad, masks * gg_weight + gg_scores.double() * weight.detach())
    torch.testing.assert_close(d_weight, (gg_scores.double() * grad.detach()).sum(0))
    # the weight part alone is the gradient check of a function linear in grad
    assert torch.autograd.gradcheck(
        lambda g: torch.ops.wtext.learned_masked_weights_backward(g, weight.detach(), scores, thresholds,
                                                                  [True, False])[0], (grad,))


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (5, 3, 2, 5), (6, 1, 3, 3), (4, 6, 1, 1)])
def test_channels_last_weight_gives_channels_last_views(device, shape):
    weight = torch.randn(shape, device=device)
    weight_cl = weight.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    weight_rm = weight.clone().requires_grad_()
    scores = torch.randn((3, *shape), device=device)
    thresholds = ops.learned_mask_thresholds(scores, weight.numel() // 2)
    bits = pack_masks(torch.rand((3, *shape), device=device) < 0.5)
    for op, mask_args in ((ops.learned_masked_weights, (scores, thresholds)), (ops.packed_masked_weights, (bits,))):
        views_cl = op(weight_cl, *mask_args, torch.bfloat16)
        views_rm = op(weight_rm, *mask_args, torch.bfloat16)
        assert torch.equal(views_cl, views_rm)
        if shape[1] > 1 and shape[2] * shape[3] > 1:
            assert all(view.is_contiguous(memory_format=torch.channels_last) for view in views_cl.unbind(0))
        grad = torch.randn(views_rm.shape, device=device, dtype=views_rm.dtype)
        weight_cl.grad = weight_rm.grad = None
        views_cl.backward(grad)
        views_rm.backward(grad)
        torch.testing.assert_close(weight_cl.grad, weight_rm.grad)
    # the gradient of channels_last views arrives stacked in their layout (unbind's backward) and is read in place
    views_cl = ops.learned_masked_weights(weight_cl.detach(), scores, thresholds)
    grad = torch.randn(views_cl.shape, device=device)
    grad_cl = torch.empty_like(views_cl).copy_(grad)
    assert grad_cl.stride() == views_cl.stride()
    for weight_read in (weight_cl.detach(), weight):
        got = torch.ops.wtext.learned_masked_weights_backward(grad_cl, weight_read, scores, thresholds, [True, True])
        expected = torch.ops.wtext.learned_masked_weights_backward(grad, weight, scores, thresholds, [True, True])
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert torch.equal(torch.ops.wtext.packed_masked_weights_backward(grad_cl, weight_read, bits),
                           torch.ops.wtext.packed_masked_weights_backward(grad, weight, bits))


def test_non_contiguous_arguments(device):
    weight = torch.randn(8, 6, device=device, dtype=torch.float64).t()  # [6, 8]; masks follow the logical order
    scores = torch.randn(6, 8, 3, device=device).permute(2, 0, 1)  # [3, 6, 8]
    thresholds = ops.learned_mask_thresholds(scores, 20)
    thresholds_strided = torch.stack([thresholds, thresholds], 1)[:, 0]
    got = ops.learned_masked_weights(weight, scores, thresholds_strided)
    assert_identical(got, reference.learned_masked_weights(weight, scores, thresholds))
    bits = pack_masks(torch.rand(3, 6, 8, device=device) < 0.5)
    bits_strided = torch.stack([bits, bits], 2)[:, :, 1]
    assert torch.equal(ops.packed_masked_weights(weight, bits_strided), weight * unpack_masks(bits, (6, 8)))


def test_empty_weight(device):
    weight = torch.randn(0, 4, device=device, requires_grad=True)
    scores = torch.randn(2, 0, 4, device=device, requires_grad=True)
    thresholds = ops.learned_mask_thresholds(scores, 0)
    views = ops.learned_masked_weights(weight, scores, thresholds)
    assert views.shape == (2, 0, 4)
    views.sum().backward()
    assert weight.grad.shape == (0, 4) and scores.grad.shape == (2, 0, 4)
    assert ops.packed_masked_weights(weight, torch.zeros(2, 0, dtype=torch.uint8, device=device)).shape == (2, 0, 4)


@pytest.mark.parametrize("shape", SHAPES + [(1, 1), (3, 11)])
@pytest.mark.parametrize("applications", [1, 3, 70])
@pytest.mark.parametrize("weight_dtype,out_dtype", [(torch.float32, None), (torch.float64, torch.float32),
                                                    (torch.float32, torch.bfloat16), (torch.float16, None)])
def test_packed_round_trip(device, shape, applications, weight_dtype, out_dtype):
    weight = torch.randn(shape, device=device, dtype=weight_dtype, requires_grad=True)
    masks = torch.rand((applications, *shape), device=device) < 0.3
    bits = pack_masks(masks)
    assert bits.shape == (applications, packed_bytes(weight.numel()))
    views = ops.packed_masked_weights(weight, bits, out_dtype)
    expected = (weight.detach() * unpack_masks(bits, shape)).to(out_dtype or weight_dtype)
    assert_identical(views, torch.where(expected == 0, 0.0, expected).to(expected.dtype))
    grad = torch.randn_like(views)
    views.backward(grad)
    expected_grad = (grad.double() * masks).sum(0).to(weight_dtype)
    torch.testing.assert_close(weight.grad, expected_grad)


def test_learned_masks_freeze_into_the_same_packed_views(device):
    # A checkpoint frozen from learned masks (pack_masks of the reference's masks) gives the same views.
    weight = torch.randn(9, 5, 3, 3, device=device)
    scores = torch.randn(4, 9, 5, 3, 3, device=device)
    thresholds = ops.learned_mask_thresholds(scores, 123)
    bits = pack_masks(reference.learned_masks(scores, thresholds))
    assert torch.equal(ops.packed_masked_weights(weight, bits), ops.learned_masked_weights(weight, scores, thresholds))


def test_opcheck(device):
    weight = torch.randn(6, 4, 3, 3, device=device, requires_grad=True)
    scores = torch.randn(3, 6, 4, 3, 3, device=device, requires_grad=True)
    thresholds = ops.learned_mask_thresholds(scores.detach(), 100)
    grad = torch.randn(3, 6, 4, 3, 3, device=device)
    bits = pack_masks(torch.rand(3, 6, 4, 3, 3, device=device) < 0.5)
    weight_cl = weight.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    learned = torch.ops.wtext.learned_masked_weights.default
    packed = torch.ops.wtext.packed_masked_weights.default
    torch.library.opcheck(torch.ops.wtext.learned_mask_thresholds.default, (scores.detach(), 100))
    torch.library.opcheck(torch.ops.wtext.learned_mask_thresholds.default, (scores.detach(), 0))
    for args in [(weight, scores, thresholds, None), (weight_cl, scores, thresholds, torch.bfloat16),
                 (weight.detach(), scores, thresholds, None), (weight, scores.detach(), thresholds, None)]:
        torch.library.opcheck(learned, args)
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(torch.ops.wtext.learned_masked_weights_backward.default,
                              (grad, weight.detach(), scores.detach(), thresholds, mask))
    for args in [(weight, bits, None), (weight_cl, bits, torch.float64)]:
        torch.library.opcheck(packed, args)
    torch.library.opcheck(torch.ops.wtext.packed_masked_weights_backward.default, (grad, weight.detach(), bits))


def test_works_under_torch_compile_with_dynamic_shapes(device):
    def loss(weight, scores, bits):
        thresholds = ops.learned_mask_thresholds(scores.detach(), scores[0].numel() // 2)
        learned = ops.learned_masked_weights(weight, scores, thresholds)
        return (learned ** 2).sum() + (ops.packed_masked_weights(weight, bits, torch.float64) ** 3).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True, dynamic=True)
    for shape, applications in (((6, 4, 3, 3), 3), ((5, 7), 4)):
        weight = torch.randn(shape, device=device, requires_grad=True)
        scores = torch.randn((applications, *shape), device=device, requires_grad=True)
        bits = pack_masks(torch.rand((applications, *shape), device=device) < 0.5)
        expected = loss(weight, scores, bits)
        expected_grads = torch.autograd.grad(expected, (weight, scores))
        got = compiled(weight, scores, bits)
        got_grads = torch.autograd.grad(got, (weight, scores))
        torch.testing.assert_close(got, expected)
        for g, e in zip(got_grads, expected_grads):
            torch.testing.assert_close(g, e)


# --- errors: every bad argument is refused with a message naming it, by the op and by its fake kernel alike ---

W = (6, 8)
FRONTS = {
    "learned": (ops.learned_masked_weights,
                dict(weight=torch.randn(W), scores=torch.randn(3, *W), thresholds=torch.zeros(3, dtype=torch.int64),
                     dtype=None)),
    "packed": (ops.packed_masked_weights, dict(weight=torch.randn(W), bits=torch.zeros(3, 6, dtype=torch.uint8),
                                               dtype=None)),
    "thresholds": (ops.learned_mask_thresholds, dict(scores=torch.randn(3, *W), kept=3)),
}


def case(front, error, message, **arguments):
    return front, arguments, error, message


ERROR_CASES = {
    "weight int": case("learned", RuntimeError, r"weight\.dtype", weight=torch.ones(W, dtype=torch.int64)),
    "weight rank 1": case("learned", RuntimeError, r"weight\.dim", weight=torch.randn(48), scores=torch.randn(3, 48)),
    "weight huge": case("learned", RuntimeError, r"2\^32", weight=torch.randn(1, 1).expand(2**16, 2**16),
                        scores=torch.randn(1, 1, 1).expand(3, 2**16, 2**16)),
    "weight not a tensor": case("learned", TypeError, r"weight must be a torch\.Tensor", weight=[[1.0]]),
    "scores float64": case("learned", RuntimeError, r"scores\.dtype", scores=torch.randn(3, *W, dtype=torch.float64)),
    "scores bfloat16": case("learned", RuntimeError, r"scores\.dtype",
                            scores=torch.randn(3, *W, dtype=torch.bfloat16)),
    "scores shape": case("learned", RuntimeError, r"scores\.shape=\[3, 6, 7\]", scores=torch.randn(3, 6, 7)),
    "scores rank": case("learned", RuntimeError, r"scores\.shape=\[6, 8\]", scores=torch.randn(*W)),
    "scores L=0": case("learned", RuntimeError, r"scores\.shape=\[0, 6, 8\]", scores=torch.randn(0, *W),
                       thresholds=torch.zeros(0, dtype=torch.int64)),
    "scores meta": case("learned", RuntimeError, r"scores\.device=meta", scores=torch.randn(3, *W, device="meta")),
    "scores not a tensor": case("learned", TypeError, r"scores must be a torch\.Tensor", scores=[1.0]),
    "thresholds int32": case("learned", RuntimeError, r"thresholds\.dtype",
                             thresholds=torch.zeros(3, dtype=torch.int32)),
    "thresholds float": case("learned", RuntimeError, r"thresholds\.dtype", thresholds=torch.zeros(3)),
    "thresholds length": case("learned", RuntimeError, r"thresholds must have shape \[L\] = \[3\].*"
                              r"thresholds\.shape=\[4\]", thresholds=torch.zeros(4, dtype=torch.int64)),
    "thresholds rank": case("learned", RuntimeError, r"thresholds\.shape=\[3, 1\]",
                            thresholds=torch.zeros(3, 1, dtype=torch.int64)),
    "thresholds meta": case("learned", RuntimeError, r"thresholds\.device=meta",
                            thresholds=torch.zeros(3, dtype=torch.int64, device="meta")),
    "thresholds not a tensor": case("learned", TypeError, r"thresholds must be a torch\.Tensor", thresholds=0),
    "dtype int": case("learned", RuntimeError, r"dtype=Int", dtype=torch.int32),
    "dtype str": case("learned", TypeError, r"dtype must be a torch\.dtype", dtype="float32"),
    "bits int32": case("packed", RuntimeError, r"bits\.dtype", bits=torch.zeros(3, 6, dtype=torch.int32)),
    "bits bool": case("packed", RuntimeError, r"bits\.dtype", bits=torch.zeros(3, 6, dtype=torch.bool)),
    # a frozen checkpoint whose bit count does not match the weight it is loaded into
    "bits count": case("packed", RuntimeError, r"bits must have shape \[L, ceil\(weight\.numel\(\) / 8\)\] = "
                       r"\[L, 6\] .*48 bits.*\[6, 8\].*got bits\.shape=\[3, 7\]",
                       bits=torch.zeros(3, 7, dtype=torch.uint8)),
    "bits unpacked": case("packed", RuntimeError, r"got bits\.shape=\[3, 6, 8\]",
                          bits=torch.zeros(3, 6, 8, dtype=torch.uint8)),
    "bits L=0": case("packed", RuntimeError, r"got bits\.shape=\[0, 6\]", bits=torch.zeros(0, 6, dtype=torch.uint8)),
    "bits meta": case("packed", RuntimeError, r"bits\.device=meta",
                      bits=torch.zeros(3, 6, dtype=torch.uint8, device="meta")),
    "bits not a tensor": case("packed", TypeError, r"bits must be a torch\.Tensor", bits=b"\x00"),
    "packed weight int": case("packed", RuntimeError, r"weight\.dtype", weight=torch.ones(W, dtype=torch.int32)),
    "packed dtype": case("packed", RuntimeError, r"dtype=Bool", dtype=torch.bool),
    "kept negative": case("thresholds", RuntimeError, r"kept=-1", kept=-1),
    "kept above numel": case("thresholds", RuntimeError, r"\[0, 48\].*kept=49", kept=49),
    "kept float": case("thresholds", TypeError, r"kept must be an int", kept=1.5),
    "kept bool": case("thresholds", TypeError, r"kept must be an int", kept=True),
    "kept huge": case("thresholds", ValueError, r"kept", kept=2**70),
    "thresholds scores float64": case("thresholds", RuntimeError, r"scores\.dtype",
                                      scores=torch.randn(3, *W, dtype=torch.float64)),
    "thresholds scores rank 2": case("thresholds", RuntimeError, r"scores\.shape=\[3, 48\]",
                                     scores=torch.randn(3, 48)),
    "thresholds scores L=0": case("thresholds", RuntimeError, r"scores\.shape=\[0, 6, 8\]",
                                  scores=torch.randn(0, *W), kept=0),
    "thresholds scores not a tensor": case("thresholds", TypeError, r"scores must be a torch\.Tensor", scores=None),
}


def call(front: str, arguments: dict, meta: bool = False):
    op, defaults = FRONTS[front]
    given = {**defaults, **arguments}
    if meta:  # every tensor on meta: the fake kernel runs, as under torch.compile
        given = {name: value.to("meta") if isinstance(value, torch.Tensor) else value for name, value in given.items()}
    return op(**given)


@pytest.mark.parametrize("name", ERROR_CASES)
def test_bad_arguments_are_refused_naming_them(name):
    front, arguments, error, message = ERROR_CASES[name]
    with pytest.raises(error, match=message):
        call(front, arguments)


@pytest.mark.parametrize("name", [name for name, (_, _, error, _) in ERROR_CASES.items()
                                  if error is RuntimeError and "meta" not in name])
def test_the_fake_kernels_refuse_what_the_ops_refuse(name):
    front, arguments, error, message = ERROR_CASES[name]
    with pytest.raises(error, match=message):
        call(front, arguments, meta=True)


def test_the_fake_kernels_give_the_ops_outputs():
    weight = torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    scores = torch.randn(3, 6, 4, 3, 3)
    thresholds = ops.learned_mask_thresholds(scores, 10)
    bits = torch.zeros(3, packed_bytes(weight.numel()), dtype=torch.uint8)
    grad = torch.randn(3, 6, 4, 3, 3)
    calls = [
        lambda w, s, t, b, g: ops.learned_mask_thresholds(s, 10),
        lambda w, s, t, b, g: ops.learned_masked_weights(w, s, t, torch.bfloat16),
        lambda w, s, t, b, g: ops.packed_masked_weights(w, b),
        lambda w, s, t, b, g: torch.ops.wtext.learned_masked_weights_backward(g, w, s, t, [True, True]),
        lambda w, s, t, b, g: torch.ops.wtext.learned_masked_weights_backward(g, w, s, t, [False, True]),
        lambda w, s, t, b, g: torch.ops.wtext.packed_masked_weights_backward(g, w, b),
    ]
    for call in calls:
        real = call(weight, scores, thresholds, bits, grad)
        fake = call(*(x.to("meta") for x in (weight, scores, thresholds, bits, grad)))
        for r, f in zip(real if isinstance(real, tuple) else (real,), fake if isinstance(fake, tuple) else (fake,)):
            if r is None:
                assert f is None
                continue
            assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride())


def test_backward_ops_check_grad():
    weight, scores = torch.randn(W), torch.randn(3, *W)
    thresholds = ops.learned_mask_thresholds(scores, 5)
    bits = torch.zeros(3, 6, dtype=torch.uint8)
    for bad, message in ((torch.randn(2, *W), r"grad\.shape=\[2, 6, 8\]"),
                         (torch.ones(3, *W, dtype=torch.int64), r"grad\.dtype"),
                         (torch.randn(3, *W, device="meta"), r"grad\.device=meta")):
        with pytest.raises(RuntimeError, match=message):
            torch.ops.wtext.learned_masked_weights_backward(bad, weight, scores, thresholds, [True, True])
        with pytest.raises(RuntimeError, match=message):
            torch.ops.wtext.packed_masked_weights_backward(bad, weight, bits)
    # the check functions the fake kernels call are the ops' own
    with pytest.raises(RuntimeError, match=r"grad\.shape=\[2, 6, 8\]"):
        _C.check_learned_masked_weights_backward(torch.randn(2, *W), weight, scores, thresholds, [True, True])
    with pytest.raises(RuntimeError, match=r"grad\.shape=\[2, 6, 8\]"):
        _C.check_packed_masked_weights_backward(torch.randn(2, *W), weight, bits)


# --- CUDA against CPU ---

@requires_cuda
@pytest.mark.parametrize("shape", SHAPES + [(256, 128, 3, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_equals_cpu(shape, channels_last):
    weight = torch.randn(shape, dtype=torch.float64)
    if channels_last and len(shape) == 4:
        weight = weight.contiguous(memory_format=torch.channels_last)
    # more applications than the seed-derived ops take in one launch (64), on the small weights
    for applications in (1, 6, 70) if weight.numel() < 2**16 else (1, 6):
        scores = random_scores(applications, shape, "cpu", ties=applications == 6)
        kept = reference.kept_count(0.3, weight.numel())
        thresholds = ops.learned_mask_thresholds(scores, kept)
        assert torch.equal(ops.learned_mask_thresholds(scores.cuda(), kept).cpu(), thresholds)
        bits = pack_masks(torch.rand((applications, *shape)) < 0.5)
        grad = torch.randn((applications, *shape))
        for dtype in (None, torch.bfloat16, torch.float32):
            cpu = ops.learned_masked_weights(weight, scores, thresholds, dtype)
            gpu = ops.learned_masked_weights(weight.cuda(), scores.cuda(), thresholds.cuda(), dtype)
            assert gpu.stride() == cpu.stride() and torch.equal(gpu.cpu(), cpu)
            assert torch.equal(ops.packed_masked_weights(weight.cuda(), bits.cuda(), dtype).cpu(),
                               ops.packed_masked_weights(weight, bits, dtype))
        grad_in = torch.empty_like(ops.learned_masked_weights(weight, scores, thresholds, torch.float32)).copy_(grad)
        cpu = torch.ops.wtext.learned_masked_weights_backward(grad_in, weight, scores, thresholds, [True, True])
        gpu = torch.ops.wtext.learned_masked_weights_backward(grad_in.cuda(), weight.cuda(), scores.cuda(),
                                                              thresholds.cuda(), [True, True])
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-12, atol=1e-12)
        assert torch.equal(gpu[1].cpu(), cpu[1])
        torch.testing.assert_close(
            torch.ops.wtext.packed_masked_weights_backward(grad_in.cuda(), weight.cuda(), bits.cuda()).cpu(),
            torch.ops.wtext.packed_masked_weights_backward(grad_in, weight, bits), rtol=1e-12, atol=1e-12)


@requires_cuda
def test_cuda_thresholds_do_not_sync_the_host():
    scores = torch.randn(6, 64, 32, 3, 3, device="cuda")
    weight = torch.randn(64, 32, 3, 3, device="cuda", requires_grad=True)
    ops.learned_mask_thresholds(scores, 1000)  # warm-up (first calls may allocate)
    torch.cuda.set_sync_debug_mode("error")
    try:
        thresholds = ops.learned_mask_thresholds(scores, 1000)
        views = ops.learned_masked_weights(weight, scores, thresholds)
        views.backward(torch.ones_like(views))
        ops.packed_masked_weights(weight, torch.zeros(6, packed_bytes(weight.numel()), dtype=torch.uint8,
                                                      device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
