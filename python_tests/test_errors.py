"""Every bad input raises an error that names the argument and the bad value."""

import pytest
import torch

import wtext.ops as ops
from conftest import requires_cuda


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
