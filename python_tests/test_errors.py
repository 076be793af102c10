"""Every bad input raises an error that names the argument and the bad value; odd but valid inputs (an unbatched x,
a solver history holding a NaN) give the results they should. python_tests/test_fuzz_ops.py sweeps the same edges
over every op and argument."""

import math

import pytest
import torch
import torch.nn.functional as F

import wtext.ops as ops
from conftest import requires_cuda
from wtext.nn.mask_reference import torch_mask


@pytest.mark.parametrize("density", [0.0, -0.5, 1.5, float("nan")])
def test_density_out_of_range(density):
    with pytest.raises(RuntimeError, match=r"density must be in \(0, 1\]; got density="):
        ops.mask((4, 4), 0, 0, density)
    with pytest.raises(RuntimeError, match=r"density must be in \(0, 1\]"):
        ops.tied_masked_weights(torch.randn(4, 4), 2, 0, density)


def test_n_greater_than_m():
    with pytest.raises(RuntimeError, match=r"nm N must be in \[1, M\]; got N=5 with M=4"):
        ops.mask((4, 8), 0, 0, 0.5, "nm", nm=(5, 4))


def test_m_not_dividing_reduction_dimension():
    with pytest.raises(RuntimeError, match=r"nm M must divide the reduction dimension \(numel / shape\[0\] = 27.*got M=4"):
        ops.masked_conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), pattern="nm")


def test_bad_nm_argument():
    with pytest.raises(ValueError, match=r"nm must be a pair \(N, M\)"):
        ops.mask((4, 8), 0, nm=4)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_or_bool_weights(dtype):
    weight = torch.ones(4, 4, dtype=dtype)
    with pytest.raises(RuntimeError, match=r"weight must have a floating-point dtype.*got weight.dtype="):
        ops.tied_masked_weights(weight, 2, 0)
    with pytest.raises(RuntimeError, match=r"weight must have a floating-point dtype"):
        ops.masked_linear(torch.randn(2, 4), weight)


def test_integer_input_to_layer():
    with pytest.raises(RuntimeError, match=r"masked_linear: x must have a floating-point dtype; got x.dtype=Long"):
        ops.masked_linear(torch.ones(2, 4, dtype=torch.int64), torch.randn(3, 4))


@pytest.mark.parametrize("shape", [(8,), ()])
def test_rank_below_two(shape):
    with pytest.raises(RuntimeError, match=r"weight must have rank >= 2.*got weight.dim\(\)="):
        ops.tied_masked_weights(torch.randn(shape), 2, 0)
    with pytest.raises(RuntimeError, match=r"rank >= 2"):
        ops.mask(shape, 0)


def test_negative_layer():
    with pytest.raises(RuntimeError, match=r"layer must be >= 0; got layer=-1"):
        ops.mask((4, 4), 0, layer=-1)
    with pytest.raises(RuntimeError, match=r"layer must be >= 0; got layer=-3"):
        ops.tied_masked_weights(torch.randn(4, 4), [0, -3], 0)
    with pytest.raises(RuntimeError, match=r"layer must be >= 0; got layer=-2"):
        ops.masked_conv2d(torch.randn(1, 4, 3, 3), torch.randn(2, 4, 1, 1), layer=-2)


def test_no_layers():
    with pytest.raises(RuntimeError, match=r"layers must name at least one layer"):
        ops.tied_masked_weights(torch.randn(4, 4), [], 0)
    with pytest.raises(ValueError, match=r"layers must be >= 1 when given as a count; got layers=0"):
        ops.tied_masked_weights(torch.randn(4, 4), 0, 0)


def test_unknown_pattern_and_mode():
    with pytest.raises(RuntimeError, match=r"pattern must be one of 'bernoulli', 'exact', 'nm'; got pattern='random'"):
        ops.tied_masked_weights(torch.randn(4, 4), 2, 0, pattern="random")
    with pytest.raises(RuntimeError, match=r"mode must be one of 'dense', 'same', 'multi'; got mode='tied'"):
        ops.tied_masked_weights(torch.randn(4, 4), 2, 0, mode="tied")


def test_conv_shape_mismatches():
    weight = torch.randn(6, 4, 3, 3)
    with pytest.raises(RuntimeError, match=r"masked_conv2d: x has C=5 channels but weight expects in=4"):
        ops.masked_conv2d(torch.randn(2, 5, 8, 8), weight)
    with pytest.raises(RuntimeError, match=r"masked_conv2d: x must have shape \[N, C, H, W\]; got x.shape=\[4, 8, 8\]"):
        ops.masked_conv2d(torch.randn(4, 8, 8), weight)
    with pytest.raises(RuntimeError, match=r"masked_conv2d: weight must have shape \[out, in, kh, kw\]"):
        ops.masked_conv2d(torch.randn(2, 4, 8, 8), torch.randn(6, 4 * 9))
    with pytest.raises(RuntimeError, match=r"masked_conv2d: bias must have shape \[out\] = \[6\]; got bias.shape=\[5\]"):
        ops.masked_conv2d(torch.randn(2, 4, 8, 8), weight, torch.randn(5))
    with pytest.raises(RuntimeError, match=r"is smaller than the dilated kernel"):
        ops.masked_conv2d(torch.randn(2, 4, 2, 2), weight)
    with pytest.raises(RuntimeError, match=r"masked_conv2d: stride must be two ints >= 1; got stride=\[0, 0\]"):
        ops.masked_conv2d(torch.randn(2, 4, 8, 8), weight, stride=0)
    with pytest.raises(ValueError, match=r"padding must be an int or a pair of ints; got padding=\(1, 1, 1\)"):
        ops.masked_conv2d(torch.randn(2, 4, 8, 8), weight, padding=(1, 1, 1))


def test_linear_shape_mismatch():
    with pytest.raises(RuntimeError, match=r"masked_linear: x's last dimension must equal in=4.*got x.shape=\[2, 5\]"):
        ops.masked_linear(torch.randn(2, 5), torch.randn(3, 4))
    with pytest.raises(RuntimeError, match=r"masked_linear: weight must have shape \[out, in\]"):
        ops.masked_linear(torch.randn(2, 4), torch.randn(3, 4, 1))


def test_backward_grad_shape_mismatch():
    weight = torch.randn(4, 4)
    with pytest.raises(RuntimeError, match=r"grad must have shape \[len\(layers\), \*weight.shape\] = \[2, 4, 4\]"):
        torch.ops.wtext.tied_masked_weights_backward(torch.randn(3, 4, 4), weight, [0, 1], 0, 0.5, "bernoulli", 2, 4,
                                                     "multi")


def test_masked_weight_given_to_a_backward_op_must_match():
    x, weight, grad_out = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3), torch.randn(2, 3, 6, 6)
    tail = (0, 1, 0.5, "bernoulli", 2, 4, [1, 1], [1, 1], [1, 1], [True, True])
    with pytest.raises(RuntimeError, match=r"masked_conv2d_backward: masked_weight must have weight's shape \[3, 4, 3, "
                                           r"3\]; got masked_weight.shape=\[3, 4, 1, 1\]"):
        torch.ops.wtext.masked_conv2d_backward(grad_out, x, weight, torch.randn(3, 4, 1, 1), *tail)
    with pytest.raises(RuntimeError, match=r"masked_conv2d_backward: masked_weight must have x's dtype Float; got "
                                           r"masked_weight.dtype=Double"):
        torch.ops.wtext.masked_conv2d_backward(grad_out, x, weight, weight.double(), *tail)
    with pytest.raises(RuntimeError, match=r"masked_linear_backward: masked_weight must have weight's shape \[3, 4\]"):
        torch.ops.wtext.masked_linear_backward(torch.randn(2, 3), torch.randn(2, 4), torch.randn(3, 4),
                                               torch.randn(4, 3), 0, 1, 0.5, "bernoulli", 2, 4, [True, True])


def test_output_dtype_must_be_floating():
    with pytest.raises(RuntimeError, match=r"dtype must be a floating-point dtype; got dtype=Int"):
        ops.tied_masked_weights(torch.randn(4, 4), 2, 0, dtype=torch.int32)


@requires_cuda
def test_tensors_on_different_devices():
    weight = torch.randn(6, 4, 3, 3, device="cuda")
    with pytest.raises(RuntimeError, match=r"masked_conv2d: x and weight must be on the same device; got x.device=cpu"):
        ops.masked_conv2d(torch.randn(2, 4, 8, 8), weight)
    with pytest.raises(RuntimeError, match=r"masked_linear: bias and weight must be on the same device"):
        ops.masked_linear(torch.randn(2, 4, device="cuda"), torch.randn(3, 4, device="cuda"), torch.randn(3))
    with pytest.raises(RuntimeError, match=r"masked_conv2d_backward: masked_weight must be on x's device cuda:0; "
                                           r"got masked_weight.device=cpu"):
        torch.ops.wtext.masked_conv2d_backward(torch.randn(2, 6, 8, 8, device="cuda"),
                                               torch.randn(2, 4, 8, 8, device="cuda"), weight, torch.randn(6, 4, 3, 3),
                                               0, 1, 0.5, "bernoulli", 2, 4, [1, 1], [1, 1], [1, 1], [True, True])
    with pytest.raises(RuntimeError, match=r"grad and weight must be on the same device"):
        torch.ops.wtext.tied_masked_weights_backward(torch.randn(1, 6, 4, 3, 3), weight, [0], 0, 0.5, "bernoulli",
                                                     2, 4, "multi")


def test_toolchain_check_tells_a_bundled_libstdcxx_from_a_linked_one():
    """The import-time check of wtext/ops/toolchain.py: our extension links libstdc++ dynamically here, while
    libstdc++ itself defines its own stream code."""
    from wtext import _C
    from wtext.ops.toolchain import bundled_libstdcxx_warning, defines_libstdcxx

    assert not defines_libstdcxx(_C.__file__)
    assert bundled_libstdcxx_warning(_C.__file__) is None
    with open("/proc/self/maps") as maps:  # the libstdc++ this process runs with (torch loaded it)
        libstdcxx = next(line.split()[-1] for line in maps if "libstdc++.so" in line.split()[-1])
    assert defines_libstdcxx(libstdcxx)
    assert "CXX=/usr/bin/g++" in bundled_libstdcxx_warning(libstdcxx)


# --- argument types: a message naming the argument and showing the value, never int()'s or the dispatcher's ---

@pytest.mark.parametrize("seed,error,message", [
    ("a", TypeError, r"seed must be an int; got seed='a' of type str"),
    (1.5, TypeError, r"seed must be an int; got seed=1.5 of type float"),
    (None, TypeError, r"seed must be an int; got seed=None"),
    (True, TypeError, r"seed must be an int; got seed=True of type bool"),
    (2**70, ValueError, r"seed must be an int in \[-2\^63, 2\^64 - 1\]; got seed=1180591620717411303424"),
    (-2**63 - 1, ValueError, r"seed must be an int in \[-2\^63, 2\^64 - 1\]; got seed=-9223372036854775809"),
])
def test_bad_seed(seed, error, message):
    weight = torch.randn(4, 4)
    for call in (lambda: ops.mask((4, 4), seed), lambda: ops.tied_masked_weights(weight, 2, seed),
                 lambda: ops.masked_linear(torch.randn(2, 4), weight, seed=seed),
                 lambda: ops.masked_conv2d(torch.randn(1, 4, 3, 3), weight.view(4, 4, 1, 1), seed=seed)):
        with pytest.raises(error, match=message):
            call()


def test_unsigned_64_bit_seeds_are_the_int64_seeds_with_the_same_bits():
    # docs/masks.md: seeds are 64-bit, taken modulo 2^64; the op takes int64, so [2^63, 2^64) wraps
    for seed in (2**63, 2**64 - 1, 2**63 + 12345):
        torch.testing.assert_close(ops.mask((8, 8), seed, 3), ops.mask((8, 8), seed - 2**64, 3), rtol=0, atol=0)
        torch.testing.assert_close(ops.mask((8, 8), seed, 3), torch_mask((8, 8), seed, 3, 0.5, "bernoulli"))


def test_bool_is_no_int_or_real_argument():
    weight = torch.randn(4, 4)
    with pytest.raises(TypeError, match=r"layer must be an int; got layer=False of type bool"):
        ops.mask((4, 4), 0, layer=False)
    with pytest.raises(TypeError, match=r"layers must be a count or a sequence of layer indices; got layers=True"):
        ops.tied_masked_weights(weight, True, 0)
    with pytest.raises(TypeError, match=r"density must be a real number in \(0, 1\]; got density=True of type bool"):
        ops.mask((4, 4), 0, density=True)
    with pytest.raises(TypeError, match=r"stride must be an int or a pair of ints; got stride=\(True, 1\), whose "
                                        r"element True is of type bool"):
        ops.masked_conv2d(torch.randn(1, 4, 3, 3), weight.view(4, 4, 1, 1), stride=(True, 1))


def test_integers_of_other_types_are_accepted():
    import numpy as np
    expected = ops.mask((4, 8), 7, 2, 0.25)
    torch.testing.assert_close(ops.mask((4, 8), np.int64(7), np.int32(2), np.float32(0.25)), expected)
    torch.testing.assert_close(ops.mask((4, 8), torch.tensor(7), 2, 0.25), expected)
    torch.testing.assert_close(ops.tied_masked_weights(torch.ones(4, 8), range(3), 7)[2],
                               ops.mask((4, 8), 7, 2), rtol=0, atol=0)


@pytest.mark.parametrize("density,error,message", [
    ("x", TypeError, r"density must be a real number in \(0, 1\]; got density='x' of type str"),
    ("0.5", TypeError, r"density must be a real number in \(0, 1\]; got density='0.5' of type str"),
    (None, TypeError, r"density must be a real number in \(0, 1\]; got density=None"),
    (1j, TypeError, r"density must be a real number in \(0, 1\]; got density=1j of type complex"),
    (10**400, ValueError, r"density must be in \(0, 1\]; got density=1000000"),
])
def test_bad_density_type(density, error, message):
    with pytest.raises(error, match=message):
        ops.mask((4, 4), 0, density=density)
    with pytest.raises(error, match=message):
        ops.masked_linear(torch.randn(2, 4), torch.randn(3, 4), density=density)


@pytest.mark.parametrize("layers,error,message", [
    ([0.5], TypeError, r"layers must be a count or a sequence of layer indices \(ints\); got layers=\[0.5\], whose "
                       r"element 0.5 is of type float"),
    (2.0, TypeError, r"layers must be a count or a sequence of layer indices; got layers=2.0 of type float"),
    ("ab", TypeError, r"layers must be a count or a sequence of layer indices \(ints\); got layers='ab'"),
    (None, TypeError, r"layers must be a count or a sequence of layer indices; got layers=None"),
    ([0, 2**70], ValueError, r"got layers=\[0, 1180591620717411303424\], whose element 1180591620717411303424 is out "
                             r"of that range"),
    (2**70, ValueError, r"layers must be a count or a sequence of layer indices in \[-2\^63, 2\^63 - 1\]"),
])
def test_bad_layers(layers, error, message):
    with pytest.raises(error, match=message):
        ops.tied_masked_weights(torch.randn(4, 4), layers, 0)


@pytest.mark.parametrize("layer,error,message", [
    (1.0, TypeError, r"layer must be an int; got layer=1.0 of type float"),
    ("1", TypeError, r"layer must be an int; got layer='1' of type str"),
    (2**63, ValueError, r"layer must be an int in \[-2\^63, 2\^63 - 1\]; got layer=9223372036854775808"),
])
def test_bad_layer(layer, error, message):
    with pytest.raises(error, match=message):
        ops.mask((4, 4), 0, layer)
    with pytest.raises(error, match=message):
        ops.masked_conv2d(torch.randn(1, 4, 3, 3), torch.randn(2, 4, 1, 1), layer=layer)


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value,error,message", [
    ("2", TypeError, r"{0} must be an int or a pair of ints; got {0}='2' of type str"),
    (1.5, TypeError, r"{0} must be an int or a pair of ints; got {0}=1.5 of type float"),
    (None, TypeError, r"{0} must be an int or a pair of ints; got {0}=None of type NoneType"),
    ((1, 2, 3), ValueError, r"{0} must be an int or a pair of ints; got {0}=\(1, 2, 3\)"),
    ((1.0, 1), TypeError, r"{0} must be an int or a pair of ints; got {0}=\(1.0, 1\), whose element 1.0 is of type "
                          r"float"),
    (2**70, ValueError, r"{0} must be an int or a pair of ints in \[-2\^63, 2\^63 - 1\]; got "
                        r"{0}=1180591620717411303424"),
    ((1, 2**64), ValueError, r"{0} must be an int or a pair of ints, each in \[-2\^63, 2\^63 - 1\]; got {0}=\(1, "),
])
def test_bad_conv_geometry_types(name, value, error, message):
    with pytest.raises(error, match=message.format(name)):
        ops.masked_conv2d(torch.randn(1, 4, 8, 8), torch.randn(2, 4, 3, 3), **{name: value})


@pytest.mark.parametrize("nm,error,message", [
    ((2.5, 4), TypeError, r"nm must be a pair \(N, M\) of ints, e.g. \(2, 4\); got nm=\(2.5, 4\), whose element 2.5"),
    (("a", 4), TypeError, r"got nm=\('a', 4\), whose element 'a' is of type str"),
    ("24", ValueError, r"nm must be a pair \(N, M\) of ints, e.g. \(2, 4\); got nm='24'"),
    ((2**70, 4), ValueError, r"nm must be a pair \(N, M\) of ints, e.g. \(2, 4\), each in \[-2\^63, 2\^63 - 1\]"),
])
def test_bad_nm_types(nm, error, message):
    with pytest.raises(error, match=message):
        ops.mask((4, 8), 0, pattern="nm", nm=nm)


@pytest.mark.parametrize("value", [3, None, b"nm", ["nm"]])
def test_pattern_and_mode_must_be_strings(value):
    with pytest.raises(TypeError, match=r"pattern must be a str, one of \('bernoulli', 'exact', 'nm'\); got pattern="):
        ops.mask((4, 8), 0, pattern=value)
    with pytest.raises(TypeError, match=r"pattern must be a str"):
        ops.masked_linear(torch.randn(2, 4), torch.randn(3, 4), pattern=value)
    with pytest.raises(TypeError, match=r"mode must be a str, one of \('dense', 'same', 'multi'\); got mode="):
        ops.tied_masked_weights(torch.randn(4, 4), 2, 0, mode=value)


def test_tensor_arguments_must_be_tensors():
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor; got x=\[\[1.0, 2.0\]\] of type list"):
        ops.masked_linear([[1.0, 2.0]], torch.randn(3, 2))
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor; got weight=None"):
        ops.masked_conv2d(torch.randn(1, 2, 3, 3), None)
    with pytest.raises(TypeError, match=r"bias must be a torch.Tensor or None; got bias=0.0 of type float"):
        ops.masked_linear(torch.randn(2, 2), torch.randn(3, 2), 0.0)
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor; got weight=\(4, 4\) of type tuple"):
        ops.tied_masked_weights((4, 4), 2, 0)
    with pytest.raises(TypeError, match=r"dtype must be a torch.dtype or None; got dtype='float16' of type str"):
        ops.tied_masked_weights(torch.randn(4, 4), 2, 0, dtype="float16")


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(shape=(4, 4.0)), TypeError, r"shape must be a sequence of sizes \(ints >= 0\); got shape=\(4, 4.0\), whose "
                                      r"element 4.0 is of type float"),
    (dict(shape=16), TypeError, r"shape must be a sequence of ints; got shape=16 of type int"),
    (dict(shape=(4, -1)), ValueError, r"shape must be a sequence of sizes \(ints >= 0\); got shape=\(4, -1\)"),
    (dict(shape=(2**16, 2**16)), ValueError, r"shape must have fewer than 2\^32 elements for masking; got "
                                             r"shape=\(65536, 65536\) with 4294967296 elements"),
    (dict(dtype=torch.int32), TypeError, r"dtype must be a floating-point torch.dtype; got dtype=torch.int32"),
    (dict(dtype="float32"), TypeError, r"dtype must be a floating-point torch.dtype; got dtype='float32'"),
    (dict(device="gpu0"), RuntimeError, r"device must be a torch.device, a device string or None; got device='gpu0'"),
])
def test_bad_mask_shape_dtype_device(kwargs, error, message):
    kwargs = {"shape": (4, 4), **kwargs}
    with pytest.raises(error, match=message):
        ops.mask(kwargs.pop("shape"), 0, **kwargs)


# --- conv sizes: bounded before any arithmetic on them, so nothing wraps around ---

@pytest.mark.parametrize("kwargs,message", [
    (dict(padding=2**62), r"masked_conv2d: padding must be < 2\^31 \(convolution backends take 32-bit sizes\); got "
                          r"padding=\[4611686018427387904, 4611686018427387904\]"),
    (dict(padding=(2**61, 0)), r"padding must be < 2\^31"),  # segfaulted: the output size wrapped around
    (dict(dilation=2**62), r"masked_conv2d: dilation must be < 2\^31"),
    (dict(stride=(1, 2**40)), r"masked_conv2d: stride must be < 2\^31 .*got stride=\[1, 1099511627776\]"),
    (dict(padding=2**30), r"masked_conv2d: the padded input must be smaller than 2\^31 along each spatial dimension "
                          r".*got x's size 8 \+ 2\*padding = 2147483656 along spatial dimension 0"),
    (dict(dilation=2**30), r"the padded input \(8 \+ 2\*0\) is smaller than the dilated kernel \(2147483649\)"),
])
def test_huge_conv_geometry_is_refused_before_it_overflows(kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        ops.masked_conv2d(torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3), **kwargs)
    with pytest.raises(RuntimeError, match=message):  # the fake kernel, as under torch.compile, agrees
        ops.masked_conv2d(torch.randn(1, 4, 8, 8, device="meta"), torch.randn(6, 4, 3, 3, device="meta"), **kwargs)


def test_conv_output_too_large_to_count():
    # an expanded x of 2^60 elements (a real one of 1) and 2^8 output channels: an output of 2^68 elements
    x, weight = torch.randn(1, 1, 1, 1).expand(2**36, 1, 2**12, 2**12), torch.randn(2**8, 1, 1, 1)
    with pytest.raises(RuntimeError, match=r"masked_conv2d: the output \[N, out, H_out, W_out\] = \[68719476736, 256, "
                                           r"4096, 4096\] has more elements than int64 can count"):
        ops.masked_conv2d(x, weight)
    with pytest.raises(RuntimeError, match=r"has more elements than int64 can count"):
        ops.masked_conv2d(x.to("meta"), weight.to("meta"))


@pytest.mark.parametrize("shape", [(6, 4, 0, 3), (0, 4, 3, 3), (6, 0, 3, 3)])
def test_empty_conv_weights_are_refused(shape):
    x = torch.randn(2, shape[1], 8, 8)
    message = r"masked_conv2d: weight must not be empty .*got weight.shape=\[" + ", ".join(map(str, shape)) + r"\]"
    with pytest.raises(RuntimeError, match=message):
        ops.masked_conv2d(x, torch.randn(shape))
    with pytest.raises(RuntimeError, match=message):
        ops.masked_conv2d(x.to("meta"), torch.randn(shape, device="meta"))


# --- backward ops: grad_out is checked against the forward's output ---

LINEAR_TAIL = (0, 1, 0.5, "bernoulli", 2, 4, [True, True])
CONV_TAIL = (0, 1, 0.5, "bernoulli", 2, 4, [1, 1], [1, 1], [1, 1], [True, True])


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_backward_ops_check_grad_out(device):
    x, weight = torch.randn(2, 5, 4, device=device), torch.randn(3, 4, device=device)
    linear_backward = torch.ops.wtext.masked_linear_backward
    with pytest.raises(RuntimeError, match=r"masked_linear_backward: grad_out must have the output's shape "
                                           r"\[2, 5, 3\]; got grad_out.shape=\[10, 3\]"):
        linear_backward(torch.randn(10, 3, device=device), x, weight, None, *LINEAR_TAIL)
    with pytest.raises(RuntimeError, match=r"masked_linear_backward: grad_out must have a floating-point dtype \(x's "
                                           r"is (Float|torch.float32)\); got grad_out.dtype=(Int|torch.int32)"):
        linear_backward(torch.ones(2, 5, 3, dtype=torch.int32, device=device), x, weight, None, *LINEAR_TAIL)
    x, weight = torch.randn(2, 4, 6, 6, device=device), torch.randn(3, 4, 3, 3, device=device)
    conv_backward = torch.ops.wtext.masked_conv2d_backward
    with pytest.raises(RuntimeError, match=r"masked_conv2d_backward: grad_out must have the output's shape "
                                           r"\[2, 3, 6, 6\]; got grad_out.shape=\[2, 3, 4, 4\]"):
        conv_backward(torch.randn(2, 3, 4, 4, device=device), x, weight, None, *CONV_TAIL)
    with pytest.raises(RuntimeError, match=r"masked_conv2d_backward: grad_out must have a floating-point dtype"):
        conv_backward(torch.ones(2, 3, 6, 6, dtype=torch.bool, device=device), x, weight, None, *CONV_TAIL)


def test_backward_ops_check_grad_out_device():
    x, weight = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"masked_linear_backward: grad_out must be on x's device cpu; got "
                                           r"grad_out.device=meta"):
        torch.ops.wtext.masked_linear_backward(torch.randn(2, 3, device="meta"), x, weight, None, *LINEAR_TAIL)
    x, weight = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3)
    with pytest.raises(RuntimeError, match=r"masked_conv2d_backward: grad_out must be on x's device cpu; got "
                                           r"grad_out.device=meta"):
        torch.ops.wtext.masked_conv2d_backward(torch.randn(2, 3, 6, 6, device="meta"), x, weight, None, *CONV_TAIL)
    with pytest.raises(RuntimeError, match=r"masked_conv2d_backward: masked_weight must be on x's device cpu; got "
                                           r"masked_weight.device=meta"):
        torch.ops.wtext.masked_conv2d_backward(torch.randn(2, 3, 6, 6), x, weight, weight.to("meta"), *CONV_TAIL)


# --- exact-count masks of 2^31 elements and more: a radix selection that holds no per-element keys ---

@pytest.mark.parametrize("shape", [(64, 1024), (2048, 1024)])  # 2^16 (a few keys per bucket), 2^21 (32 per bucket)
def test_exact_masks_of_many_elements_equal_the_plain_pytorch_mask(shape):
    # The threshold used to come from nth_element over all numel keys (8 bytes each: std::bad_alloc from 2^31
    # elements); it is now one past the k-th smallest key found bucket by bucket. Same key, same mask.
    for seed, layer, density in ((3, 0, 0.5), (-9, 7, 0.013), (2**62, 2, 0.999)):
        got = ops.mask(shape, seed, layer, density, "exact")
        assert got.sum().item() == math.floor(density * math.prod(shape) + 0.5)
        torch.testing.assert_close(got, torch_mask(shape, seed, layer, density, "exact"), rtol=0, atol=0)


# --- devices: a meta tensor among real ones is an error, not an uninitialized result ---

def test_meta_mixed_with_cpu_is_refused():
    x, weight, bias = torch.randn(2, 4), torch.randn(3, 4), torch.randn(3)
    meta = torch.device("meta")
    with pytest.raises(RuntimeError, match=r"masked_linear: x and weight must be on the same device; got x.device=cpu "
                                           r"and weight.device=meta"):
        ops.masked_linear(x, weight.to(meta))
    with pytest.raises(RuntimeError, match=r"masked_linear: x and weight must be on the same device; got x.device=meta "
                                           r"and weight.device=cpu"):
        ops.masked_linear(x.to(meta).requires_grad_(), weight)
    with pytest.raises(RuntimeError, match=r"masked_linear: bias and weight must be on the same device; got "
                                           r"bias.device=meta and weight.device=cpu"):
        ops.masked_linear(x, weight, bias.to(meta))
    x4, weight4 = torch.randn(1, 4, 5, 5), torch.randn(3, 4, 3, 3)
    with pytest.raises(RuntimeError, match=r"masked_conv2d: bias and weight must be on the same device; got "
                                           r"bias.device=meta and weight.device=cpu"):
        ops.masked_conv2d(x4, weight4, bias.to(meta))
    with pytest.raises(RuntimeError, match=r"masked_conv2d: x and weight must be on the same device; got x.device=cpu "
                                           r"and weight.device=meta"):
        ops.masked_conv2d(x4, weight4.to(meta).requires_grad_())
    with pytest.raises(RuntimeError, match=r"grad and weight must be on the same device; got grad.device=meta and "
                                           r"weight.device=cpu"):
        torch.ops.wtext.tied_masked_weights_backward(torch.randn(2, 3, 4, device=meta), weight, [0, 1], 0, 0.5,
                                                     "bernoulli", 2, 4, "multi")
    with pytest.raises(RuntimeError, match=r"grad and weight must be on the same device; got grad.device=cpu and "
                                           r"weight.device=meta"):
        torch.ops.wtext.tied_masked_weights_backward(torch.randn(2, 3, 4), weight.to(meta), [0, 1], 0, 0.5,
                                                     "bernoulli", 2, 4, "multi")
    h, g = torch.zeros(2, 3, 4), torch.zeros(2, 3, 3)
    with pytest.raises(RuntimeError, match=r"anderson_step: all tensors must be on x's device cpu; got "
                                           r"gram.device=meta"):
        torch.ops.wtext.anderson_step(x, x, h, h.clone(), g.to(meta), 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match=r"anderson_step: all tensors must be on x's device cpu; got "
                                           r"g_history.device=meta"):
        torch.ops.wtext.anderson_step(x, x, h.to(meta), h.clone(), g, 0, 0.0, 1.0)


def test_mixed_device_backward_through_autograd_is_refused():
    # tied_masked_weights' backward given a gradient on another device than its weight
    weight = torch.randn(3, 4, requires_grad=True)
    stacked = ops.tied_masked_weights(weight, 2, 0)
    with pytest.raises(RuntimeError, match=r"grad and weight must be on the same device"):
        torch.ops.wtext.tied_masked_weights_backward(torch.ones(2, 3, 4, device="meta"), weight.detach(), [0, 1], 0,
                                                     0.5, "bernoulli", 2, 4, "multi")
    stacked.sum().backward()  # the real one still works
    assert weight.grad.shape == (3, 4)


def test_all_meta_calls_keep_working():
    meta = torch.device("meta")
    x, weight = torch.randn(2, 4, 9, 9, device=meta), torch.randn(6, 4, 3, 3, device=meta)
    assert ops.masked_conv2d(x, weight, torch.randn(6, device=meta), stride=2, padding=1).shape == (2, 6, 5, 5)
    x.requires_grad_()
    assert ops.masked_linear(torch.randn(5, 7, 4, device=meta), torch.randn(3, 4, device=meta)).shape == (5, 7, 3)
    assert ops.masked_linear(torch.randn(4, device=meta), torch.randn(3, 4, device=meta)).shape == (3,)
    assert ops.tied_masked_weights(weight, 3, 0, pattern="exact").shape == (3, 6, 4, 3, 3)
    assert ops.mask((2**16, 2**15), 0, pattern="exact", device=meta).shape == (2**16, 2**15)
    grads = torch.ops.wtext.masked_conv2d_backward(torch.randn(2, 6, 9, 9, device=meta), x.detach(), weight, None,
                                                   *CONV_TAIL)
    assert grads[0].shape == x.shape and grads[1].shape == weight.shape


# --- an unbatched x, as F.linear takes it ---

@pytest.mark.parametrize("with_bias", [True, False])
def test_unbatched_linear_matches_f_linear_with_its_gradients(with_bias):
    x = torch.randn(8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True) if with_bias else None
    mask = ops.mask((6, 8), 4, 2, 0.5, dtype=torch.float64)
    out = ops.masked_linear(x, weight, bias, 4, 2)
    torch.testing.assert_close(out, F.linear(x, weight * mask, bias))
    inputs = (x, weight, bias) if with_bias else (x, weight)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), inputs),
                               torch.autograd.grad(F.linear(x, weight * mask, bias).sum(), inputs))
    torch.autograd.gradcheck(lambda *args: ops.masked_linear(*args, seed=4, layer=2), inputs)
    torch.autograd.gradgradcheck(lambda *args: ops.masked_linear(*args, seed=4, layer=2), inputs)


def test_unbatched_linear_with_only_the_bias_needing_a_gradient():
    # the reproduction: "invalid gradient at index 2 - got [] but expected shape compatible with [6]"
    bias = torch.randn(6, requires_grad=True)
    ops.masked_linear(torch.randn(8), torch.randn(6, 8), bias).sum().backward()
    torch.testing.assert_close(bias.grad, torch.ones(6))


# --- Anderson: a non-finite step does not poison the steps after it ---

def _anderson_run(device, nan_step, batch=2, dim=6, m=3, steps=9, lam=1e-3, beta=0.8, tracked=False):
    """Outputs of anderson_(tracked_)step over `steps` steps of random finite iterates, sample 0 given a NaN in f(x) at
    nan_step (None: never). Returns the outputs and the (x, fx) pairs fed."""
    generator = torch.Generator().manual_seed(5)
    g_history = torch.full((batch, m, dim), float("nan"), dtype=torch.float64, device=device)
    f_history, gram = torch.full_like(g_history, float("nan")), torch.zeros(batch, m, m, dtype=torch.float64,
                                                                             device=device)
    if tracked:
        best = torch.zeros(batch, dim, dtype=torch.float64, device=device)
        flags = {name: torch.zeros(batch, dtype=torch.bool, device=device)
                 for name in ("best_pending", "diverged", "nonfinite")}
        active = torch.ones(batch, dtype=torch.bool, device=device)
        lowest = torch.full((batch,), float("inf"), dtype=torch.float64, device=device)
        first = torch.zeros(batch, dtype=torch.float64, device=device)
        counts = torch.zeros(batch, dtype=torch.int64, device=device)
        trace = torch.zeros(batch, steps, dtype=torch.float64, device=device)
    outputs, fed, previous = [], [], None
    for step in range(steps):
        x = torch.randn(batch, dim, generator=generator, dtype=torch.float64).to(device)
        fx = torch.randn(batch, dim, generator=generator, dtype=torch.float64).to(device)
        if step == nan_step:
            fx[0, 1] = float("nan")
        if tracked:
            active.fill_(True)  # a caller that restarts stopped samples on the same buffers
            out = torch.ops.wtext.anderson_tracked_step(
                x, fx, g_history, f_history, gram, x if previous is None else previous, best, flags["best_pending"],
                lowest, first, counts, active, flags["diverged"], flags["nonfinite"], trace, step, lam, beta, 1e-12,
                False, 1e30)
        else:
            out = torch.ops.wtext.anderson_step(x, fx, g_history, f_history, gram, step, lam, beta)
        previous = x
        outputs.append(out.cpu())
        fed.append((x.cpu(), fx.cpu()))
    return outputs, fed


def _weights_over(gram, slots, newest, lam):
    """The step's weights over the window slots `slots` (the finite ones), zero elsewhere, as a reference."""
    sub = gram[slots][:, slots]
    system = sub / sub.diagonal().mean() + lam * torch.eye(len(slots), dtype=gram.dtype)
    w = torch.linalg.solve(system, torch.ones(len(slots), dtype=gram.dtype))
    alpha = torch.zeros(gram.shape[0], dtype=gram.dtype)
    alpha[slots] = w / w.sum()
    return alpha


@pytest.mark.parametrize("tracked", [False, True])
def test_anderson_recovers_after_a_nan_residual(device, tracked):
    m, lam, beta, nan_step = 3, 1e-3, 0.8, 2
    outputs, fed = _anderson_run(device, nan_step, m=m, lam=lam, beta=beta, tracked=tracked)
    clean, _ = _anderson_run(device, None, m=m, lam=lam, beta=beta, tracked=tracked)
    if tracked:  # the NaN step stops the sample, which keeps its iterate
        torch.testing.assert_close(outputs[nan_step][0], fed[nan_step][0][0])
    else:  # a plain step onto f(x), which holds the NaN
        assert not torch.isfinite(outputs[nan_step][0]).all()
    for step, out in enumerate(outputs):
        assert torch.isfinite(out[1]).all()
        torch.testing.assert_close(out[1], clean[step][1])  # the other sample never notices
        if step != nan_step:
            assert torch.isfinite(out[0]).all(), f"step {step}: {out[0]}"
    # while the NaN slot is in the window, the step mixes the finite slots alone, as the reference does
    for step in range(nan_step + 1, nan_step + m):
        slots = [s for s in range(m) if s != nan_step % m]
        window = [fed[step - ((step - s) % m)] for s in range(m)]  # (x, fx) held in slot s at this step
        residuals = torch.stack([fx[0] - x[0] for x, fx in window])
        images = torch.stack([fx[0] for _, fx in window])
        alpha = _weights_over(residuals @ residuals.T, slots, step % m, lam)
        expected = sum(alpha[s] * (images[s] - (1 - beta) * residuals[s]) for s in slots)
        torch.testing.assert_close(outputs[step][0], expected)
    # once the NaN slot has been overwritten the window holds what a run without the NaN would hold there, except
    # that one slot: the same weights formula over a full window
    for step in range(nan_step + m, len(outputs)):
        window = [fed[step - ((step - s) % m)] for s in range(m)]
        residuals = torch.stack([fx[0] - x[0] for x, fx in window])
        images = torch.stack([fx[0] for _, fx in window])
        alpha = _weights_over(residuals @ residuals.T, list(range(m)), step % m, lam)
        torch.testing.assert_close(outputs[step][0], (alpha[:, None] * (images - (1 - beta) * residuals)).sum(0))
        torch.testing.assert_close(outputs[step][0], clean[step][0])
