"""Autograd formulas of the wtext ops. Each backward calls other registered ops, so torch.compile traces it."""

import torch

from . import _extension  # noqa: F401  (the ops must be registered first)


# tied_masked_weights(weight, layers, seed, density, pattern, nm_n, nm_m, mode, dtype)
def _tied_setup_context(ctx, inputs, output):
    weight, *ctx.mask_args = inputs[:8]
    ctx.save_for_backward(weight)


def _tied_backward(ctx, grad):
    (weight,) = ctx.saved_tensors
    # dW = sum_l grad_l ⊙ M_l in one fused kernel; the masks are regenerated, never kept from the forward.
    grad_weight = torch.ops.wtext.tied_masked_weights_backward(grad, weight, *ctx.mask_args)
    return (grad_weight,) + (None,) * 8


# masked_conv2d(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m, stride, padding, dilation)
def _layer_setup_context(ctx, inputs, output):
    x, weight, bias, *ctx.layer_args = inputs
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(x, weight)


def _bias_gradient(ctx, grad_out, reduce_dims):
    if ctx.bias_dtype is None or not ctx.needs_input_grad[2]:
        return None
    return grad_out.sum(reduce_dims, dtype=ctx.bias_dtype)


def _conv_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight = torch.ops.wtext.masked_conv2d_backward(grad_out, x, weight, *ctx.layer_args)
    grad_bias = _bias_gradient(ctx, grad_out, (0, 2, 3))
    return (grad_x, grad_weight, grad_bias) + (None,) * 9


def _linear_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight = torch.ops.wtext.masked_linear_backward(grad_out, x, weight, *ctx.layer_args)
    grad_bias = _bias_gradient(ctx, grad_out, tuple(range(grad_out.dim() - 1)))
    return (grad_x, grad_weight, grad_bias) + (None,) * 6


torch.library.register_autograd(
    "wtext::tied_masked_weights", _tied_backward, setup_context=_tied_setup_context
)
torch.library.register_autograd("wtext::masked_conv2d", _conv_backward, setup_context=_layer_setup_context)
torch.library.register_autograd("wtext::masked_linear", _linear_backward, setup_context=_layer_setup_context)
