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


# Learned masks: the views' gradient goes to the weight through the masks (dW = sum_l g_l ⊙ M_l) and to the scores
# straight through (dS_l = g_l ⊙ W, kept entries or not), both from one pass of the backward op, which computes only
# what needs_input_grad asks for (a frozen weight trains its scores alone, fixed scores their weight alone).
def _learned_setup_context(ctx, inputs, output):
    _keep(ctx, torch.ops.wtext.learned_masked_weights, inputs, saved=("weight", "scores", "thresholds"))


def _learned_backward(ctx, grad):
    needs = dict(zip(_names(torch.ops.wtext.learned_masked_weights), ctx.needs_input_grad))
    grad_weight, grad_scores = _call(torch.ops.wtext.learned_masked_weights_backward, _kept(ctx), grad=grad,
                                     output_mask=[needs["weight"], needs["scores"]])
    return _gradients(torch.ops.wtext.learned_masked_weights, weight=grad_weight, scores=grad_scores)


torch.library.register_autograd("wtext::learned_masked_weights", _learned_backward,
                                setup_context=_learned_setup_context)


# Its backward is linear in grad and, through dS = g ⊙ W, bilinear in (grad, weight); the masks are piecewise
# constant in the scores, which get no second-order term. For incoming gradients gg_W and gg_S:
#   d/dgrad = M ⊙ gg_W (the forward op on gg_W, in grad's dtype) + gg_S ⊙ W,   d/dW = sum_l gg_S,l ⊙ grad_l.
def _learned_backward_setup_context(ctx, inputs, output):
    _keep(ctx, torch.ops.wtext.learned_masked_weights_backward, inputs,
          saved=("grad", "weight", "scores", "thresholds"))


def _learned_double_backward(ctx, grad_grad_weight, grad_grad_scores):
    kept = _kept(ctx)
    needs = dict(zip(_names(torch.ops.wtext.learned_masked_weights_backward), ctx.needs_input_grad))
    grad, weight = kept["grad"], kept["weight"]
    gradients = {}
    if needs["grad"]:
        terms = []
        if grad_grad_weight is not None:
            terms.append(_call(torch.ops.wtext.learned_masked_weights, kept, weight=grad_grad_weight,
                               dtype=grad.dtype))
        if grad_grad_scores is not None:
            terms.append((grad_grad_scores * weight).to(grad.dtype))
        gradients["grad"] = sum(terms) if terms else None
    if needs["weight"] and grad_grad_scores is not None:
        gradients["weight"] = (grad_grad_scores * grad).sum(0).to(weight.dtype)
    return _gradients(torch.ops.wtext.learned_masked_weights_backward, **gradients)


torch.library.register_autograd("wtext::learned_masked_weights_backward", _learned_double_backward,
                                setup_context=_learned_backward_setup_context)


# Packed masks: a gradient for the weight alone (the bits are data, not parameters).
def _packed_setup_context(ctx, inputs, output):
    _keep(ctx, torch.ops.wtext.packed_masked_weights, inputs, saved=("weight", "bits"))


def _packed_backward(ctx, grad):
    grad_weight = _call(torch.ops.wtext.packed_masked_weights_backward, _kept(ctx), grad=grad)
    return _gradients(torch.ops.wtext.packed_masked_weights, weight=grad_weight)


torch.library.register_autograd("wtext::packed_masked_weights", _packed_backward, setup_context=_packed_setup_context)


# packed_masked_weights_backward is linear in grad: its adjoint is the forward op on the incoming gradient, in grad's
# dtype.
def _packed_backward_setup_context(ctx, inputs, output):
    named = _keep(ctx, torch.ops.wtext.packed_masked_weights_backward, inputs, saved=("bits",),
                  dropped=("grad", "weight"))
    ctx.arguments["dtype"] = named["grad"].dtype


def _packed_double_backward(ctx, grad_grad_weight):
    d_grad = _call(torch.ops.wtext.packed_masked_weights, _kept(ctx), weight=grad_grad_weight)
    return _gradients(torch.ops.wtext.packed_masked_weights_backward, grad=d_grad)


torch.library.register_autograd("wtext::packed_masked_weights_backward", _packed_double_backward,
                                setup_context=_packed_backward_setup_context)
