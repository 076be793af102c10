"""model_for: the model a TrainConfig describes (preset, width, depth, DEQ variant, masks), for training runs and
for the experiments that rebuild a run's model."""

import dataclasses

from torch import nn

from wtext import models
from wtext.nn import MaskSpec

from .config import TrainConfig


def model_for(config: TrainConfig, num_classes: int) -> nn.Module:
    """The model a TrainConfig describes. Options a preset does not have (a plain CNN's depth or mask) are errors
    when set, and left out when at their defaults."""
    preset = models.preset_config(config.model)
    has = {f.name for f in dataclasses.fields(preset)}
    overrides = {"num_classes": num_classes}
    for name in ("width", "depth", "deq"):
        value = getattr(config, name)
        if value is not None:
            if name not in has:
                raise ValueError(f"model {config.model} has no {name}; drop --{name}")
            overrides[name] = value
    if "mask" in has:
        density = preset.mask.density if config.density is None else config.density
        overrides["mask"] = MaskSpec(mode=config.mask_mode, density=density, pattern=config.pattern,
                                     nm=config.nm_pair(), seed=config.mask_seed)
    return models.build_model(config.model, **overrides)
