"""Weight-tied ResNet-like and Transformer-like models (dense / same-mask / multi-mask) and their DEQ twins."""

from .accounting import describe
from .reference import PlainCNN, PlainCNNConfig
from .presets import (DEQ_VARIANTS, HEAD, PRESETS, build_model, deq_variant, list_presets, model_from_config,
                      preset_config, register_preset)
from .resnet import ResidualCell, TiedResNet, TiedResNetConfig
from .tied_model import TiedModel
from .vit import TiedViT, TiedViTConfig, TransformerBlock

__all__ = [
    "DEQ_VARIANTS",
    "HEAD",
    "PRESETS",
    "PlainCNN",
    "PlainCNNConfig",
    "ResidualCell",
    "TiedModel",
    "TiedResNet",
    "TiedResNetConfig",
    "TiedViT",
    "TiedViTConfig",
    "TransformerBlock",
    "build_model",
    "deq_variant",
    "describe",
    "list_presets",
    "model_from_config",
    "preset_config",
    "register_preset",
]
