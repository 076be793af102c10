"""Which modules an adapter can attach to, the shapes of their weights, and how it attaches."""

from torch import nn

from wtext.nn import TiedMaskedWeight

from .adapter import LoRAAdapter

ATTRIBUTE = "lora"  # the adapter's name as a child of the adapted module (state_dict: <module>.lora.A / .B)
SUPPORTED = "nn.Linear, nn.Conv2d (groups=1, padding_mode='zeros') and wtext.nn.TiedMaskedWeight"


def kind_of(module: nn.Module, name: str) -> str:
    """"linear", "conv2d" or "tied"; ValueError naming the module for anything else.

    Exact types for Linear and Conv2d: a subclass may not call its own forward (nn.MultiheadAttention reads its
    out_proj's weight directly), and a hook on it would then be silently skipped."""
    if isinstance(module, TiedMaskedWeight):
        return "tied"
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is nn.Conv2d:
        if module.groups != 1:
            raise ValueError(f"LoRA target {name!r} is a grouped nn.Conv2d (groups={module.groups}); supported: "
                             f"{SUPPORTED}")
        if module.padding_mode != "zeros":
            raise ValueError(f"LoRA target {name!r} is an nn.Conv2d with padding_mode={module.padding_mode!r}; "
                             f"supported: {SUPPORTED}")
        return "conv2d"
    raise ValueError(f"LoRA target {name!r} is a {type(module).__name__}, which LoRA cannot adapt; supported: "
                     f"{SUPPORTED} (narrow the targets patterns)")


def weight_shape(module: nn.Module) -> tuple[int, tuple[int, ...]]:
    """(out, in_shape) of the module's weight [out, *in_shape]; every supported kind stores it as `weight`."""
    out, *in_shape = module.weight.shape
    return out, tuple(in_shape)


def attach(module: nn.Module, adapter: LoRAAdapter) -> None:
    """Makes `adapter` the child `lora` of `module` and routes through it the module's output (Linear, Conv2d: a
    forward hook) or its shared weight (TiedMaskedWeight: the adapter goes into its weight-update slot)."""
    if hasattr(module, ATTRIBUTE):
        raise ValueError(f"module {adapter.name!r} already has an attribute {ATTRIBUTE!r}")
    if adapter.kind == "tied":
        module.set_weight_update(ATTRIBUTE, adapter)
        return
    setattr(module, ATTRIBUTE, adapter)
    # The hook is the adapter's bound method, so copy.deepcopy and pickling of the model carry it along.
    if adapter.kind == "linear":
        module.register_forward_hook(adapter.linear_hook, with_kwargs=True)
    elif adapter.kind == "conv2d":
        module.register_forward_hook(adapter.conv_hook, with_kwargs=True)


def adapter_of(module: nn.Module) -> LoRAAdapter | None:
    """The adapter of `module`, or None: a TiedMaskedWeight's weight update when it is a LoRAAdapter, otherwise the
    module's LoRAAdapter child (the one whose forward hook attach registered)."""
    if isinstance(module, TiedMaskedWeight):
        update = module.weight_update
        return update if isinstance(update, LoRAAdapter) else None
    return next((child for child in module.children() if isinstance(child, LoRAAdapter)), None)
