"""Named model presets, DEQ variants, and build_model(): every model of the paper's comparisons by name."""

import dataclasses
from collections.abc import Callable

from torch import nn

from wtext.deq import DEQConfig

from .reference import PlainCNN, PlainCNNConfig
from .resnet import TiedResNet, TiedResNetConfig
from .vit import TiedViT, TiedViTConfig

# The attribute name of every preset's classifier head (an nn.Linear): the module a transfer run may re-initialize
# (another number of classes) or train alone.
HEAD = "head"

# name -> (description, config factory)
PRESETS: dict[str, tuple[str, Callable[[], object]]] = {}

# The DEQ variants the paper compares weight-tied models with.
DEQ_VARIANTS: dict[str, DEQConfig] = {
    "implicit": DEQConfig(backward="implicit"),
    "phantom": DEQConfig(backward="phantom", phantom_steps=5, phantom_tau=0.6),
    "one_step": DEQConfig(backward="one_step"),
    "implicit_jr": DEQConfig(backward="implicit", jac_reg_weight=0.4, f_max_iter=12),
    "phantom_jr": DEQConfig(backward="phantom", phantom_steps=5, phantom_tau=0.6, jac_reg_weight=0.4),
    # RevDEQ: exact gradients of the coupled iteration, memory flat in its steps (docs/deq.md: beta and steps).
    "reversible": DEQConfig(backward="reversible", f_max_iter=8),
}


def register_preset(name: str, description: str):
    def register(factory):
        if name in PRESETS:
            raise ValueError(f"a preset named {name!r} is already registered")
        PRESETS[name] = (description, factory)
        return factory

    return register


@register_preset("resnet-small", "ResNet-like, near MDEQ-small (170K) in size: ~205K parameters, width 32, 2 stages")
def _resnet_small():
    return TiedResNetConfig(width=32, expansion=2, depth=6, stages=2, groups=8)


@register_preset("resnet-large", "ResNet-like, about the size of the 10M-parameter MDEQ (~9.7M): width 144, expansion 5, "
                                 "2 stages")
def _resnet_large():
    return TiedResNetConfig(width=144, expansion=5, depth=6, stages=2, groups=8)


@register_preset("resnet-tiny", "ResNet-like for quick CPU runs: width 16, 2 stages, depth 3")
def _resnet_tiny():
    return TiedResNetConfig(width=16, expansion=2, depth=3, stages=2, groups=4)


@register_preset("vit-small", "ViT-like: conv tokenizer to 8x8 tokens, dim 192, 3 heads, depth 6, mask density 0.9")
def _vit_small():
    return TiedViTConfig(dim=192, heads=3, depth=6, patch=4)


@register_preset("vit-tiny", "ViT-like for quick CPU runs: conv tokenizer to 8x8 tokens, dim 64, 2 heads, depth 4")
def _vit_tiny():
    return TiedViTConfig(dim=64, heads=2, depth=4, patch=4)


@register_preset("cnn-reference", "plain CNN to measure the tied models against: 3 convs + GroupNorm, 2 max-pools, "
                                  "linear head on the flattened map (~35K parameters); no tied weights, no masks")
def _cnn_reference():
    return PlainCNNConfig(width=16)


def list_presets() -> dict[str, str]:
    return {name: description for name, (description, _) in PRESETS.items()}


def preset_config(name: str, **overrides):
    """The preset's config with fields replaced by `overrides` (e.g. width=64, mask=MaskSpec(...),
    deq="implicit" or a DEQConfig)."""
    try:
        _, factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}") from None
    config = factory()
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"preset {name!r} has no option {unknown[0]!r}; its options: {', '.join(sorted(fields))}")
    if isinstance(overrides.get("deq"), str):
        overrides["deq"] = deq_variant(overrides["deq"])
    return dataclasses.replace(config, **overrides)


def deq_variant(name: str) -> DEQConfig:
    try:
        return DEQ_VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown DEQ variant {name!r}; variants: {', '.join(DEQ_VARIANTS)}") from None


def model_from_config(config) -> nn.Module:
    if isinstance(config, TiedResNetConfig):
        return TiedResNet(config)
    if isinstance(config, TiedViTConfig):
        return TiedViT(config)
    if isinstance(config, PlainCNNConfig):
        return PlainCNN(config)
    raise TypeError(f"no model for a config of type {type(config).__name__}")


def build_model(name: str, **overrides) -> nn.Module:
    """The model of preset `name`, with config overrides (see preset_config)."""
    return model_from_config(preset_config(name, **overrides))
