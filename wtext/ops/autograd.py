"""Autograd formulas of the wtext ops registered from Python. Each backward calls other registered ops, so
torch.compile traces it."""

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


# masked_conv2d and masked_linear have their autograd in C++ (csrc/masked_conv2d/masked_conv2d_autograd.cpp and
# csrc/masked_linear/masked_linear_autograd.cpp): they run once per tied application, and a Python autograd wrapper
# cost several times the host time of F.conv2d per call (benchmarks/NOTES.md).


torch.library.register_autograd(
    "wtext::tied_masked_weights", _tied_backward, setup_context=_tied_setup_context
)


# Backward ops are differentiable too, so double backward (e.g. the Jacobian-vector products of a DEQ's Jacobian
# regularizer, or gradgradcheck) works. Each formula is again made of wtext ops:
#   grad_x = conv_T(g, M⊙W), grad_W = M ⊙ corr(x, g)   (linear: g @ (M⊙W) and M ⊙ g^T x)
# so, for incoming gradients gg_x and gg_W,
#   d/dg = layer(gg_x, W) + layer(x, gg_W),  d/dx = backward(g, x, gg_W).grad_x,  d/dW = backward(g, gg_x, W).grad_W
# where each backward call asks (output_mask) for the one gradient it uses.
# masked_weight (the forward's W ⊙ M, kept when x needs a gradient) is a cache of M ⊙ weight, not an input of its
# own: the formulas below differentiate through weight, and the backward calls they make pass None for it.
def _layer_backward_setup_context(ctx, inputs, output):
    grad_out, x, weight, _masked_weight, *layer_args, _output_mask = inputs  # each double-backward call sets its own
    ctx.layer_args = layer_args
    ctx.save_for_backward(grad_out, x, weight)


def _double_backward(ctx, grad_grad_x, grad_grad_weight, forward_op, backward_op):
    grad_out, x, weight = ctx.saved_tensors
    args = ctx.layer_args
    # forward ops take (x, weight, bias, *mask_args, *geometry); backward ops take
    # (g, x, weight, masked_weight, *args, output_mask).
    mask_args, geometry = args[:6], args[6:]
    # gradients the forward did not return (output_mask) arrive as None, like unused ones
    d_grad_out = d_x = d_weight = None
    if ctx.needs_input_grad[0]:
        terms = []
        if grad_grad_x is not None:
            terms.append(forward_op(grad_grad_x, weight, None, *mask_args, *geometry))
        if grad_grad_weight is not None:
            terms.append(forward_op(x, grad_grad_weight, None, *mask_args, *geometry))
        d_grad_out = sum(terms) if terms else None
    if ctx.needs_input_grad[1] and grad_grad_weight is not None:
        d_x = backward_op(grad_out, x, grad_grad_weight, None, *args, [True, False])[0]
    if ctx.needs_input_grad[2] and grad_grad_x is not None:
        d_weight = backward_op(grad_out, grad_grad_x, weight, None, *args, [False, True])[1]
    return (d_grad_out, d_x, d_weight, None) + (None,) * (len(args) + 1)


def _conv_double_backward(ctx, grad_grad_x, grad_grad_weight):
    return _double_backward(ctx, grad_grad_x, grad_grad_weight, torch.ops.wtext.masked_conv2d,
                            torch.ops.wtext.masked_conv2d_backward)


def _linear_double_backward(ctx, grad_grad_x, grad_grad_weight):
    return _double_backward(ctx, grad_grad_x, grad_grad_weight, torch.ops.wtext.masked_linear,
                            torch.ops.wtext.masked_linear_backward)


# tied_masked_weights_backward(grad, weight, layers, seed, density, pattern, nm_n, nm_m, mode) is linear in grad:
# its adjoint is the forward op applied to the incoming gradient.
def _tied_backward_setup_context(ctx, inputs, output):
    grad, weight, *ctx.mask_args = inputs
    ctx.grad_dtype = grad.dtype


def _tied_double_backward(ctx, grad_grad_weight):
    d_grad = torch.ops.wtext.tied_masked_weights(grad_grad_weight, *ctx.mask_args, ctx.grad_dtype)
    return (d_grad,) + (None,) * 8


torch.library.register_autograd("wtext::masked_conv2d_backward", _conv_double_backward,
                                setup_context=_layer_backward_setup_context)
torch.library.register_autograd("wtext::masked_linear_backward", _linear_double_backward,
                                setup_context=_layer_backward_setup_context)
torch.library.register_autograd("wtext::tied_masked_weights_backward", _tied_double_backward,
                                setup_context=_tied_backward_setup_context)
