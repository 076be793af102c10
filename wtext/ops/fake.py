"""Fake (meta) kernels: output shapes, dtypes and layouts of every wtext op, so torch.compile can trace them.

The layout rule mirrors layer_memory_format() in csrc/masked_conv2d/masked_conv2d.cpp: outputs, input gradients
and the kept masked weight of a layer are channels_last exactly when x is channels_last-contiguous and not
plain-contiguous; the views of tied_masked_weights follow the same rule applied to the weight
(csrc/tied_masked_weights).
"""

import torch

from . import _extension  # noqa: F401  (the ops must be registered first)


def layer_memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@torch.library.register_fake("wtext::mask")
def _mask_fake(like, seed, layer, density, pattern, nm_n, nm_m):
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


@torch.library.register_fake("wtext::tied_masked_weights")
def _tied_masked_weights_fake(weight, layers, seed, density, pattern, nm_n, nm_m, mode, dtype=None):
    shape = (len(layers), *weight.shape)
    if layer_memory_format(weight) == torch.channels_last:  # the views take a channels_last weight's layout
        out_channels, in_channels, _, kernel_w = weight.shape
        reduction = weight.numel() // out_channels
        return weight.new_empty_strided(shape, (weight.numel(), reduction, 1, kernel_w * in_channels, in_channels),
                                        dtype=dtype or weight.dtype)
    return weight.new_empty(shape, dtype=dtype or weight.dtype)


@torch.library.register_fake("wtext::tied_masked_weights_backward")
def _tied_masked_weights_backward_fake(grad, weight, layers, seed, density, pattern, nm_n, nm_m, mode):
    return weight.new_empty(weight.shape)


def _conv_output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.register_fake("wtext::masked_conv2d")
def _masked_conv2d_fake(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m, stride, padding, dilation):
    height, width = (
        _conv_output_size(x.shape[2 + d], weight.shape[2 + d], stride[d], padding[d], dilation[d]) for d in range(2)
    )
    shape = (x.shape[0], weight.shape[0], height, width)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layer_memory_format(x))


@torch.library.register_fake("wtext::masked_conv2d_forward")
def _masked_conv2d_forward_fake(x, weight, bias, *args):
    masked_weight = torch.empty(weight.shape, dtype=x.dtype, device=x.device, memory_format=layer_memory_format(x))
    return _masked_conv2d_fake(x, weight, bias, *args), masked_weight


@torch.library.register_fake("wtext::masked_conv2d_backward")
def _masked_conv2d_backward_fake(grad_out, x, weight, masked_weight, seed, layer, density, pattern, nm_n, nm_m, stride,
                                 padding, dilation, output_mask):
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layer_memory_format(x))
    return grad_x if output_mask[0] else None, weight.new_empty(weight.shape) if output_mask[1] else None


@torch.library.register_fake("wtext::masked_linear")
def _masked_linear_fake(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.register_fake("wtext::masked_linear_forward")
def _masked_linear_forward_fake(x, weight, bias, *args):
    return _masked_linear_fake(x, weight, bias, *args), weight.new_empty(weight.shape, dtype=x.dtype)


@torch.library.register_fake("wtext::masked_linear_backward")
def _masked_linear_backward_fake(grad_out, x, weight, masked_weight, seed, layer, density, pattern, nm_n, nm_m,
                                 output_mask):
    return x.new_empty(x.shape) if output_mask[0] else None, weight.new_empty(weight.shape) if output_mask[1] else None


@torch.library.register_fake("wtext::anderson_step")
def _anderson_step_fake(x, fx, g_history, f_history, gram, step, lam, beta):
    return x.new_empty(x.shape)


@torch.library.register_fake("wtext::anderson_tracked_step")
def _anderson_tracked_step_fake(x, fx, g_history, f_history, gram, previous_x, best, best_pending, lowest, first, steps,
                                active, diverged, nonfinite, trace, step, lam, beta, tol, relative, divergence_ratio):
    return x.new_empty(x.shape)
