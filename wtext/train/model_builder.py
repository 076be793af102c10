"""model_for: the model a TrainConfig describes (preset, width, depth, DEQ variant, masks), for training runs and
for the experiments that rebuild a run's model; load_initial_weights (--init-from) and adapt_for_training (--lora,
--train-only) for transfer runs."""

import dataclasses
from fnmatch import fnmatchcase
from pathlib import Path

from torch import nn

from wtext import lora, models
from wtext.deq import COUPLED_MODES
from wtext.nn import MaskSpec
from wtext.nn.learned_model import configure_learned_masks, match_frozen_masks

from .checkpoint import load_checkpoint
from .config import Role, TrainConfig, options_with



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
    if config.deq_check_every:
        if config.deq is None:  # reached by --eval-only of a checkpoint without a DEQ (TrainConfig checks the rest)
            raise ValueError(f"deq_check_every applies to DEQ twins only; model {config.model} is not one "
                             f"(drop --deq-check-every)")
        # The early-end test of the forward solve and of the adjoint solve; it leaves the variant's results
        # unchanged. The coupled iteration of reversible gradients has no adjoint solve (and refuses b_ options).
        variant = models.deq_variant(config.deq)
        adjoint = {} if variant.backward in COUPLED_MODES else {"b_check_every": config.deq_check_every}
        overrides["deq"] = dataclasses.replace(variant, f_check_every=config.deq_check_every, **adjoint)
    if "mask" in has:
        density = preset.mask.density if config.density is None else config.density
        overrides["mask"] = MaskSpec(mode=config.mask_mode, density=density, pattern=config.pattern,
                                     nm=config.nm_pair(), seed=config.mask_seed,
                                     overlap=config.mask_overlap, learning=config.mask_learning,
                                     init=config.mask_init)
    model = models.build_model(config.model, **overrides)
    configure_learned_masks(model, (config.mask_temperature, config.mask_final_temperature),
                            config.mask_density_penalty)
    return model


def load_initial_weights(model: nn.Module, config: TrainConfig, log=print) -> None:
    """Loads the model weights of the checkpoint config.init_from into `model` (built by model_for, before any
    adapter), strictly: every key present on both sides with the same shape, except a classifier head of another
    shape, which keeps its fresh initialization (logged). Errors name the file and the mismatched keys or options."""
    path = Path(config.init_from)
    if not path.is_file():
        raise FileNotFoundError(f"--init-from {path}: no such checkpoint file")
    checkpoint = load_checkpoint(path, "cpu")
    state, trained = checkpoint["model"], checkpoint.get("config", {})
    try:
        match_frozen_masks(model, state)  # a checkpoint whose learned masks were frozen gives its masks as bits
    except ValueError as error:
        raise ValueError(f"init_from {path}: {error}") from None
    defaults = type(config)()
    preset = models.preset_config(config.model)

    def resolved(name, value):  # density None means the preset's, which the masks were made with
        return preset.mask.density if name == "density" and value is None and hasattr(preset, "mask") else value

    # A checkpoint's tied weights were trained under its masks, which are not stored: initializing a model with
    # other masks (Role.MASK options) from them would silently be another network.
    for name in options_with(Role.MASK, type(config)):
        value = trained.get(name, getattr(defaults, name))
        if resolved(name, value) != resolved(name, getattr(config, name)):
            raise ValueError(f"init_from {path}: it was trained with {name}={value!r}, this run has {name}="
                             f"{getattr(config, name)!r}; its tied weights only fit the masks they were trained "
                             f"with (give --{name.replace('_', '-')} {value})")
    own = model.state_dict()
    head = [key for key in own if key.startswith(models.HEAD + ".")]
    fresh_head = any(key in state and tuple(state[key].shape) != tuple(own[key].shape) for key in head)
    if fresh_head:
        shapes = ", ".join(f"{key} {tuple(state[key].shape)} -> {tuple(own[key].shape)}" for key in head
                           if key in state)
        state = {key: value for key, value in state.items() if not key.startswith(models.HEAD + ".")}
        log(f"init_from {path}: the classifier head has another shape ({shapes}); it keeps its fresh "
            f"initialization, every other weight comes from the checkpoint")
    expected = [key for key in own if not (fresh_head and key in head)]
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in own]
    wrong = [f"{key} {tuple(state[key].shape)} in the checkpoint, {tuple(own[key].shape)} here" for key in expected
             if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
    problems = ([f"shapes differ: {'; '.join(wrong[:4])}"] if wrong else []) + \
               ([f"missing in the checkpoint: {', '.join(missing[:6])}"] if missing else []) + \
               ([f"not in this model: {', '.join(unexpected[:6])}"] if unexpected else [])
    if problems:
        model_name = trained.get("model", "?")
        raise ValueError(f"init_from {path}: its weights (model {model_name}) do not fit this run's model "
                         f"({config.model}): {'; '.join(problems)}")
    model.load_state_dict(state, strict=not fresh_head)


def adapt_for_training(model: nn.Module, config: TrainConfig) -> None:
    """--lora: injects the adapters (wtext.lora.inject), freezing every base weight except those of --train-only's
    modules. --train-only without --lora: freezes every parameter except those of the matching modules."""
    lora_config = config.lora_config()
    if lora_config is not None:
        lora.inject(model, lora_config)
        return
    patterns = config.train_only_patterns()
    if patterns is None:
        return
    named = [(name, module) for name, module in model.named_modules() if name]
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name, _ in named):
            modules = ", ".join(name for name, _ in named[:12]) + (", ..." if len(named) > 12 else "")
            raise ValueError(f"train_only pattern {pattern!r} matches no module of the {type(model).__name__}; "
                             f"its modules: {modules}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, module in named:
        if any(fnmatchcase(name, pattern) for pattern in patterns):
            for parameter in module.parameters():
                parameter.requires_grad_(True)
