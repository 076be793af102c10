"""Fake (meta) kernels: output shapes, dtypes and layouts of every wtext op, so torch.compile can trace them.

The layout rule mirrors layer_memory_format() in csrc/masked_layer/masked_layer.cpp: outputs, input gradients
and the kept masked weight of a layer are channels_last exactly when x is channels_last-contiguous and not
plain-contiguous; the views of tied_masked_weights follow the same rule applied to the weight
(csrc/tied_masked_weights).

These kernels also run for eager calls that mix a meta tensor with real ones (the dispatcher picks the Meta kernel
whenever any argument is on meta), where they used to return an uninitialized tensor on the real device. So they
check devices, and the shapes their output shapes are computed from, with the C++ kernels' messages.
"""

import math

import torch

from . import _extension  # noqa: F401  (the ops must be registered first)

_MAX_SPATIAL = (1 << 31) - 1  # the conv size limits of check_conv_arguments (csrc/masked_conv2d)
_INT64_MAX = (1 << 63) - 1


def _same_device(op: str, reference_name: str, reference: torch.Tensor, **others) -> None:
    for name, tensor in others.items():
        if tensor is not None and tensor.device != reference.device:
            raise RuntimeError(f"{op}: {name} and {reference_name} must be on the same device; got "
                               f"{name}.device={tensor.device} and {reference_name}.device={reference.device}")


def _shape(tensor: torch.Tensor) -> list:
    return list(tensor.shape)


def _check_layer_inputs(op: str, x, weight, bias) -> None:
    # the order of check_layer_inputs (csrc/masked_layer)
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"{op}: x must have a floating-point dtype; got x.dtype={x.dtype}")
    _same_device(op, "weight", weight, x=x, bias=bias)
    if bias is not None and not bias.dtype.is_floating_point:
        raise RuntimeError(f"{op}: bias must have a floating-point dtype; got bias.dtype={bias.dtype}")


def _check_bias_shape(op: str, bias, weight) -> None:
    """After the op's own checks of weight's shape, as check_bias_shape."""
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise RuntimeError(f"{op}: bias must have shape [out] = [{weight.shape[0]}]; got bias.shape={_shape(bias)}")


def _check_grad_out(op: str, grad_out, output_shape, x) -> None:
    if grad_out.device != x.device:
        raise RuntimeError(f"{op}: grad_out must be on x's device {x.device}; got grad_out.device={grad_out.device}")
    if not grad_out.dtype.is_floating_point:
        raise RuntimeError(f"{op}: grad_out must have a floating-point dtype (x's is {x.dtype}); got "
                           f"grad_out.dtype={grad_out.dtype}")
    if _shape(grad_out) != list(output_shape):
        raise RuntimeError(f"{op}: grad_out must have the output's shape {list(output_shape)}; got "
                           f"grad_out.shape={_shape(grad_out)}")


def _check_masked_weight(op: str, masked_weight, x, weight) -> None:
    if masked_weight is None:
        return
    if _shape(masked_weight) != _shape(weight):
        raise RuntimeError(f"{op}: masked_weight must have weight's shape {_shape(weight)}; got "
                           f"masked_weight.shape={_shape(masked_weight)}")
    if masked_weight.dtype != x.dtype:
        raise RuntimeError(f"{op}: masked_weight must have x's dtype {x.dtype}; got masked_weight.dtype="
                           f"{masked_weight.dtype}")
    if masked_weight.device != x.device:
        raise RuntimeError(f"{op}: masked_weight must be on x's device {x.device}; got masked_weight.device="
                           f"{masked_weight.device}")


def _check_mask_plan(weight, layers, density, pattern, nm_n, nm_m, mode) -> None:
    """The checks of plan_tied_masks and check_mask_arguments (csrc/mask/mask_plan.cpp), in their order."""
    if mode not in ("dense", "same", "multi"):
        raise RuntimeError(f"mode must be one of 'dense', 'same', 'multi'; got mode='{mode}'")
    if pattern not in ("bernoulli", "exact", "nm"):
        raise RuntimeError(f"pattern must be one of 'bernoulli', 'exact', 'nm'; got pattern='{pattern}'")
    if not weight.dtype.is_floating_point:
        raise RuntimeError(f"weight must have a floating-point dtype (float64, float32, float16 or bfloat16); got "
                           f"weight.dtype={weight.dtype}")
    if weight.dim() < 2:
        raise RuntimeError(f"weight must have rank >= 2 ([out, in, ...]); got weight.dim()={weight.dim()} with shape "
                           f"{_shape(weight)}")
    if not (math.isfinite(density) and 0 < density <= 1):
        raise RuntimeError(f"density must be in (0, 1]; got density={density}")
    numel = weight.numel()
    # (a symbolic numel is left to the kernel: the comparison would add a guard to every compiled call)
    if type(numel) is int and numel >= 1 << 32:
        raise RuntimeError(f"weight must have fewer than 2^32 elements for masking; got weight.numel()={numel}")
    if pattern == "nm":
        if not 1 <= nm_m <= 64:
            raise RuntimeError(f"nm M must be in [1, 64]; got M={nm_m}")
        if not 1 <= nm_n <= nm_m:
            raise RuntimeError(f"nm N must be in [1, M]; got N={nm_n} with M={nm_m}")
        reduction = 0 if weight.shape[0] == 0 else numel // weight.shape[0]
        if reduction % nm_m != 0:
            raise RuntimeError(f"nm M must divide the reduction dimension (numel / shape[0] = {reduction} for weight "
                               f"shape {_shape(weight)}); got M={nm_m}")
    if len(layers) == 0:
        raise RuntimeError("layers must name at least one layer; got an empty list")
    for layer in layers:
        if layer < 0:
            raise RuntimeError(f"layer must be >= 0; got layer={layer}")


def layer_memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@torch.library.register_fake("wtext::mask")
def _mask_fake(like, seed, layer, density, pattern, nm_n, nm_m):
    _check_mask_plan(like, [layer], density, pattern, nm_n, nm_m, "multi")
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


@torch.library.register_fake("wtext::tied_masked_weights")
def _tied_masked_weights_fake(weight, layers, seed, density, pattern, nm_n, nm_m, mode, dtype=None):
    _check_mask_plan(weight, layers, density, pattern, nm_n, nm_m, mode)
    if dtype is not None and not dtype.is_floating_point:
        raise RuntimeError(f"dtype must be a floating-point dtype; got dtype={dtype}")
    shape = (len(layers), *weight.shape)
    if layer_memory_format(weight) == torch.channels_last:  # the views take a channels_last weight's layout
        out_channels, in_channels, _, kernel_w = weight.shape
        reduction = weight.numel() // out_channels
        return weight.new_empty_strided(shape, (weight.numel(), reduction, 1, kernel_w * in_channels, in_channels),
                                        dtype=dtype or weight.dtype)
    return weight.new_empty(shape, dtype=dtype or weight.dtype)


@torch.library.register_fake("wtext::tied_masked_weights_backward")
def _tied_masked_weights_backward_fake(grad, weight, layers, seed, density, pattern, nm_n, nm_m, mode):
    if grad.device != weight.device:
        raise RuntimeError(f"grad and weight must be on the same device; got grad.device={grad.device} and "
                           f"weight.device={weight.device}")
    if not grad.dtype.is_floating_point:
        raise RuntimeError(f"grad must have a floating-point dtype; got grad.dtype={grad.dtype}")
    expected = [len(layers), *_shape(weight)]
    if _shape(grad) != expected:
        raise RuntimeError(f"grad must have shape [len(layers), *weight.shape] = {expected}; got grad.shape="
                           f"{_shape(grad)}")
    _check_mask_plan(weight, layers, density, pattern, nm_n, nm_m, mode)
    return weight.new_empty(weight.shape)


def _conv_output_shape(x, weight, stride, padding, dilation, bias=None) -> list:
    """The output shape, after the checks of check_conv_arguments (csrc/masked_conv2d) that it depends on."""
    op = "masked_conv2d"
    if x.dim() != 4:
        raise RuntimeError(f"{op}: x must have shape [N, C, H, W]; got x.shape={_shape(x)}")
    if weight.dim() != 4:
        raise RuntimeError(f"{op}: weight must have shape [out, in, kh, kw]; got weight.shape={_shape(weight)}")
    if x.shape[1] != weight.shape[1]:
        raise RuntimeError(f"{op}: x has C={x.shape[1]} channels but weight expects in={weight.shape[1]} "
                           f"(weight.shape={_shape(weight)}, x.shape={_shape(x)}; groups=1 only)")
    _check_bias_shape(op, bias, weight)
    for name, values, low in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(values) != 2 or values[0] < low or values[1] < low:
            raise RuntimeError(f"{op}: {name} must be two ints >= {low}; got {name}={list(values)}")
    for name, values in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if max(values) > _MAX_SPATIAL:
            raise RuntimeError(f"{op}: {name} must be < 2^31 (convolution backends take 32-bit sizes); got "
                               f"{name}={list(values)}")
    if weight.numel() == 0:
        raise RuntimeError(f"{op}: weight must not be empty (at least one output channel, one input channel and a 1x1 "
                           f"kernel); got weight.shape={_shape(weight)}")
    shape = [x.shape[0], weight.shape[0]]
    for d in range(2):
        if x.shape[2 + d] > _MAX_SPATIAL or weight.shape[2 + d] > _MAX_SPATIAL:
            raise RuntimeError(f"{op}: x and weight must be smaller than 2^31 along each spatial dimension "
                               f"(convolution backends take 32-bit sizes); got x.shape={_shape(x)}, "
                               f"weight.shape={_shape(weight)}")
        padded = x.shape[2 + d] + 2 * padding[d]
        kernel = dilation[d] * (weight.shape[2 + d] - 1) + 1
        if padded > _MAX_SPATIAL:
            raise RuntimeError(f"{op}: the padded input must be smaller than 2^31 along each spatial dimension "
                               f"(convolution backends take 32-bit sizes); got x's size {x.shape[2 + d]} + 2*padding = "
                               f"{padded} along spatial dimension {d} (x.shape={_shape(x)}, padding={list(padding)})")
        if padded < kernel:
            raise RuntimeError(f"{op}: the padded input ({x.shape[2 + d]} + 2*{padding[d]}) is smaller than the "
                               f"dilated kernel ({kernel}) along spatial dimension {d}; x.shape={_shape(x)}, "
                               f"weight.shape={_shape(weight)}, padding={list(padding)}, dilation={list(dilation)}")
        shape.append((padded - kernel) // stride[d] + 1)
    # (for concrete sizes only: with symbolic ones under torch.compile this would add a guard to every compiled conv)
    if all(type(size) is int for size in shape) and math.prod(shape) > _INT64_MAX:
        raise RuntimeError(f"{op}: the output [N, out, H_out, W_out] = {shape} has more elements than int64 can count; "
                           f"check padding={list(padding)}, stride={list(stride)} and dilation={list(dilation)} "
                           f"(x.shape={_shape(x)}, weight.shape={_shape(weight)})")
    return shape


@torch.library.register_fake("wtext::masked_conv2d")
def _masked_conv2d_fake(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m, stride, padding, dilation):
    _check_layer_inputs("masked_conv2d", x, weight, bias)
    shape = _conv_output_shape(x, weight, stride, padding, dilation, bias)
    _check_mask_plan(weight, [layer], density, pattern, nm_n, nm_m, "multi")
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layer_memory_format(x))


@torch.library.register_fake("wtext::masked_conv2d_forward")
def _masked_conv2d_forward_fake(x, weight, bias, *args):
    masked_weight = torch.empty(weight.shape, dtype=x.dtype, device=x.device, memory_format=layer_memory_format(x))
    return _masked_conv2d_fake(x, weight, bias, *args), masked_weight


@torch.library.register_fake("wtext::masked_conv2d_backward")
def _masked_conv2d_backward_fake(grad_out, x, weight, masked_weight, seed, layer, density, pattern, nm_n, nm_m, stride,
                                 padding, dilation, output_mask):
    op = "masked_conv2d_backward"
    _check_layer_inputs("masked_conv2d", x, weight, None)
    _check_grad_out(op, grad_out, _conv_output_shape(x, weight, stride, padding, dilation), x)
    _check_masked_weight(op, masked_weight, x, weight)
    if output_mask[0] or output_mask[1]:
        _check_mask_plan(weight, [layer], density, pattern, nm_n, nm_m, "multi")
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layer_memory_format(x))
    return grad_x if output_mask[0] else None, weight.new_empty(weight.shape) if output_mask[1] else None


def _linear_output_shape(x, weight) -> list:
    """The output shape, after the checks of check_linear_arguments (csrc/masked_linear) that it depends on."""
    if weight.dim() != 2:
        raise RuntimeError(f"masked_linear: weight must have shape [out, in]; got weight.shape={_shape(weight)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise RuntimeError(f"masked_linear: x's last dimension must equal in={weight.shape[1]} (weight.shape="
                           f"{_shape(weight)}); got x.shape={_shape(x)}")
    return [*x.shape[:-1], weight.shape[0]]


@torch.library.register_fake("wtext::masked_linear")
def _masked_linear_fake(x, weight, bias, seed, layer, density, pattern, nm_n, nm_m):
    _check_layer_inputs("masked_linear", x, weight, bias)
    shape = _linear_output_shape(x, weight)
    _check_bias_shape("masked_linear", bias, weight)
    _check_mask_plan(weight, [layer], density, pattern, nm_n, nm_m, "multi")
    return x.new_empty(shape)


@torch.library.register_fake("wtext::masked_linear_forward")
def _masked_linear_forward_fake(x, weight, bias, *args):
    return _masked_linear_fake(x, weight, bias, *args), weight.new_empty(weight.shape, dtype=x.dtype)


@torch.library.register_fake("wtext::masked_linear_backward")
def _masked_linear_backward_fake(grad_out, x, weight, masked_weight, seed, layer, density, pattern, nm_n, nm_m,
                                 output_mask):
    op = "masked_linear_backward"
    _check_layer_inputs("masked_linear", x, weight, None)
    _check_grad_out(op, grad_out, _linear_output_shape(x, weight), x)
    _check_masked_weight(op, masked_weight, x, weight)
    if output_mask[0] or output_mask[1]:
        _check_mask_plan(weight, [layer], density, pattern, nm_n, nm_m, "multi")
    return x.new_empty(x.shape) if output_mask[0] else None, weight.new_empty(weight.shape) if output_mask[1] else None


def _anderson_devices(x, **others) -> None:
    # the messages of check_anderson_step and check_anderson_tracker (csrc/anderson/anderson.cpp)
    for name, tensor in others.items():
        if tensor.device != x.device:
            if name in ("fx", "g_history", "f_history", "gram"):
                raise RuntimeError(f"anderson_step: all tensors must be on x's device {x.device}; got "
                                   f"{name}.device={tensor.device}")
            raise RuntimeError(f"anderson_tracked_step: {name} must be on x's device {x.device}; got "
                               f"{name}.device={tensor.device}")


@torch.library.register_fake("wtext::anderson_step")
def _anderson_step_fake(x, fx, g_history, f_history, gram, step, lam, beta):
    _anderson_devices(x, fx=fx, g_history=g_history, f_history=f_history, gram=gram)
    return x.new_empty(x.shape)


@torch.library.register_fake("wtext::anderson_tracked_step")
def _anderson_tracked_step_fake(x, fx, g_history, f_history, gram, previous_x, best, best_pending, lowest, first, steps,
                                active, diverged, nonfinite, trace, step, lam, beta, tol, relative, divergence_ratio):
    _anderson_devices(x, fx=fx, g_history=g_history, f_history=f_history, gram=gram, previous_x=previous_x, best=best,
                      best_pending=best_pending, lowest=lowest, first=first, steps=steps, active=active,
                      diverged=diverged, nonfinite=nonfinite, trace=trace)
    return x.new_empty(x.shape)
