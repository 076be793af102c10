"""Autograd formulas of the wtext ops registered from Python. Each backward calls other registered ops, so
torch.compile traces it.

An op's arguments are listed once, in its schema. The formulas keep an op's inputs by name, call the related ops (the
backward op, the forward op) with the arguments those ops' schemas name, and return one gradient per argument of the
op's schema. So a change to an op's arguments needs no edit here while related ops give shared arguments the same
names; only a new tensor argument that needs a gradient needs a formula.
"""

import functools

import torch

from . import _extension  # noqa: F401  (the ops must be registered first)


@functools.cache
def _names(op) -> tuple[str, ...]:
    """The argument names of op (a torch.ops.wtext packet) in its schema's order."""
    return tuple(argument.name for argument in op.default._schema.arguments)


def _keep(ctx, op, inputs, saved: tuple[str, ...] = (), dropped: tuple[str, ...] = ()) -> dict:
    """Keeps op's inputs for the backward by name: `saved` through save_for_backward, the rest but `dropped` as they
    are. Returns all the inputs by name."""
    named = dict(zip(_names(op), inputs))
    ctx.save_for_backward(*(named[name] for name in saved))
    ctx.saved_names = saved
    ctx.arguments = {name: value for name, value in named.items() if name not in saved and name not in dropped}
    return named


def _kept(ctx) -> dict:
    return {**ctx.arguments, **dict(zip(ctx.saved_names, ctx.saved_tensors))}


def _call(op, arguments: dict, **overrides):
    """op called with the arguments its schema names, from `overrides`, else from `arguments`."""
    given = {**arguments, **overrides}
    return op(*(given[name] for name in _names(op)))


def _gradients(op, **gradients) -> tuple:
    """What a backward formula of op returns: one gradient per argument, None for those not given."""
    return tuple(gradients.get(name) for name in _names(op))


def _tied_setup_context(ctx, inputs, output):
    _keep(ctx, torch.ops.wtext.tied_masked_weights, inputs, saved=("weight",))


def _tied_backward(ctx, grad):
    # dW = sum_l grad_l ⊙ M_l in one fused kernel; the masks are regenerated, never kept from the forward.
    grad_weight = _call(torch.ops.wtext.tied_masked_weights_backward, _kept(ctx), grad=grad)
    return _gradients(torch.ops.wtext.tied_masked_weights, weight=grad_weight)


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
def _layer_backward_setup_context(ctx, inputs, output, backward_op):
    _keep(ctx, backward_op, inputs, saved=("grad_out", "x", "weight"), dropped=("masked_weight",))


def _double_backward(ctx, grad_grad_x, grad_grad_weight, forward_op, backward_op):
    kept = _kept(ctx)
    needs = dict(zip(_names(backward_op), ctx.needs_input_grad))
    # gradients the forward did not return (output_mask) arrive as None, like unused ones
    gradients = {}
    if needs["grad_out"]:
        terms = []
        if grad_grad_x is not None:
            terms.append(_call(forward_op, kept, x=grad_grad_x, bias=None))
        if grad_grad_weight is not None:
            terms.append(_call(forward_op, kept, weight=grad_grad_weight, bias=None))
        gradients["grad_out"] = sum(terms) if terms else None
    if needs["x"] and grad_grad_weight is not None:
        gradients["x"] = _call(backward_op, kept, weight=grad_grad_weight, masked_weight=None,
                               output_mask=[True, False])[0]
    if needs["weight"] and grad_grad_x is not None:
        gradients["weight"] = _call(backward_op, kept, x=grad_grad_x, masked_weight=None, output_mask=[False, True])[1]
    return _gradients(backward_op, **gradients)


def _register_double_backward(forward_op, backward_op) -> None:
    torch.library.register_autograd(
        backward_op.default, functools.partial(_double_backward, forward_op=forward_op, backward_op=backward_op),
        setup_context=functools.partial(_layer_backward_setup_context, backward_op=backward_op))


_register_double_backward(torch.ops.wtext.masked_conv2d, torch.ops.wtext.masked_conv2d_backward)
_register_double_backward(torch.ops.wtext.masked_linear, torch.ops.wtext.masked_linear_backward)


# tied_masked_weights_backward is linear in grad: its adjoint is the forward op applied to the incoming gradient, in
# grad's dtype.
def _tied_backward_setup_context(ctx, inputs, output):
    named = _keep(ctx, torch.ops.wtext.tied_masked_weights_backward, inputs, dropped=("grad", "weight"))
    ctx.arguments["dtype"] = named["grad"].dtype


def _tied_double_backward(ctx, grad_grad_weight):
    d_grad = _call(torch.ops.wtext.tied_masked_weights, ctx.arguments, weight=grad_grad_weight)
    return _gradients(torch.ops.wtext.tied_masked_weights_backward, grad=d_grad)


torch.library.register_autograd("wtext::tied_masked_weights_backward", _tied_double_backward,
                                setup_context=_tied_backward_setup_context)
