"""Fake (meta) kernels: the shapes, dtypes, devices and layouts of every wtext op's outputs, so torch.compile can
trace the ops.

A fake kernel must refuse what its op refuses: torch.compile traces with it, and an eager call that mixes a meta
tensor with real ones runs it too (the dispatcher picks the Meta kernel whenever any argument is on meta). So each
one first calls its op's own argument checks, wtext._C.check_<op>, the C++ functions the op runs (they read shapes,
dtypes and devices, never data, and take symbolic sizes), and then allocates its outputs by the ops' layout rules,
which come from C++ too (wtext._C.layer_memory_format, wtext._C.empty_tied_masked_weights).
"""

import torch

from ._extension import _C  # (loading it registers the ops, which must come first)


def _like_x(x, shape) -> torch.Tensor:
    """An output (or input gradient) of a masked layer: x's dtype, device and layout rule."""
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_C.layer_memory_format(x))


def _density_number(density):
    """The mask ops' Scalar density, refused as their C++ kernels refuse it (density_number): the C++ checks called
    next take a float, which would read a bool as 0.0 or 1.0."""
    if isinstance(density, bool):
        raise RuntimeError(f"density must be a real number in (0, 1], not a bool; got density={density}")
    return density


@torch.library.register_fake("wtext::mask")
def _mask_fake(like, seed, layer, density, *args):
    _C.check_mask(like, seed, layer, _density_number(density), *args)
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


# dtype is named: the dispatcher leaves out an argument given its default value.
@torch.library.register_fake("wtext::tied_masked_weights")
def _tied_masked_weights_fake(weight, layers, seed, density, pattern, nm_n, nm_m, mode, dtype=None):
    _C.check_tied_masked_weights(weight, layers, seed, _density_number(density), pattern, nm_n, nm_m, mode, dtype)
    return _C.empty_tied_masked_weights(weight, len(layers), dtype)


@torch.library.register_fake("wtext::tied_masked_weights_backward")
def _tied_masked_weights_backward_fake(grad, weight, layers, seed, density, *args):
    _C.check_tied_masked_weights_backward(grad, weight, layers, seed, _density_number(density), *args)
    return weight.new_empty(weight.shape)


@torch.library.register_fake("wtext::masked_conv2d")
def _masked_conv2d_fake(x, weight, bias, *args):
    return _like_x(x, _C.check_masked_conv2d(x, weight, bias, *args))


@torch.library.register_fake("wtext::masked_conv2d_forward")
def _masked_conv2d_forward_fake(x, weight, bias, *args):
    return _masked_conv2d_fake(x, weight, bias, *args), _like_x(x, weight.shape)


def _output_mask_pair(op: str, output_mask) -> list:
    """A backward op's output_mask, refused as its C++ kernel refuses it (output_mask_pair) when it is not 2 long."""
    if len(output_mask) != 2:
        raise RuntimeError(f"{op}: output_mask must hold 2 bools (which of the two gradients to return); got "
                           f"{len(output_mask)}")
    return output_mask


# A backward op's last argument is output_mask: which of (grad_x, grad_weight) it returns.
@torch.library.register_fake("wtext::masked_conv2d_backward")
def _masked_conv2d_backward_fake(grad_out, x, weight, *args):
    output_mask = _output_mask_pair("masked_conv2d_backward", args[-1])
    _C.check_masked_conv2d_backward(grad_out, x, weight, *args)
    return _like_x(x, x.shape) if output_mask[0] else None, weight.new_empty(weight.shape) if output_mask[1] else None


@torch.library.register_fake("wtext::masked_linear")
def _masked_linear_fake(x, weight, bias, *args):
    return x.new_empty(_C.check_masked_linear(x, weight, bias, *args))


@torch.library.register_fake("wtext::masked_linear_forward")
def _masked_linear_forward_fake(x, weight, bias, *args):
    return _masked_linear_fake(x, weight, bias, *args), weight.new_empty(weight.shape, dtype=x.dtype)


@torch.library.register_fake("wtext::masked_linear_backward")
def _masked_linear_backward_fake(grad_out, x, weight, *args):
    output_mask = _output_mask_pair("masked_linear_backward", args[-1])
    _C.check_masked_linear_backward(grad_out, x, weight, *args)
    return x.new_empty(x.shape) if output_mask[0] else None, weight.new_empty(weight.shape) if output_mask[1] else None


@torch.library.register_fake("wtext::anderson_step")
def _anderson_step_fake(x, *args):
    _C.check_anderson_step(x, *args)
    return x.new_empty(x.shape)


@torch.library.register_fake("wtext::anderson_tracked_step")
def _anderson_tracked_step_fake(x, *args):
    _C.check_anderson_tracked_step(x, *args)
    return x.new_empty(x.shape)


@torch.library.register_fake("wtext::learned_mask_thresholds")
def _learned_mask_thresholds_fake(scores, kept):
    _C.check_learned_mask_thresholds(scores, kept)
    return scores.new_empty((scores.shape[0],), dtype=torch.int64)


@torch.library.register_fake("wtext::learned_masked_weights")
def _learned_masked_weights_fake(weight, scores, thresholds, dtype=None):
    _C.check_learned_masked_weights(weight, scores, thresholds, dtype)
    return _C.empty_tied_masked_weights(weight, scores.shape[0], dtype)


@torch.library.register_fake("wtext::learned_masked_weights_backward")
def _learned_masked_weights_backward_fake(grad, weight, scores, thresholds, output_mask):
    _output_mask_pair("learned_masked_weights_backward", output_mask)
    _C.check_learned_masked_weights_backward(grad, weight, scores, thresholds, output_mask)
    return (weight.new_empty(weight.shape) if output_mask[0] else None,
            scores.new_empty(scores.shape) if output_mask[1] else None)


@torch.library.register_fake("wtext::packed_masked_weights")
def _packed_masked_weights_fake(weight, bits, dtype=None):
    _C.check_packed_masked_weights(weight, bits, dtype)
    return _C.empty_tied_masked_weights(weight, bits.shape[0], dtype)


@torch.library.register_fake("wtext::packed_masked_weights_backward")
def _packed_masked_weights_backward_fake(grad, weight, bits):
    _C.check_packed_masked_weights_backward(grad, weight, bits)
    return weight.new_empty(weight.shape)
