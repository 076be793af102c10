"""Which training runs can be trained as one horizontally fused model (wtext.train.fused), and why others cannot.

Runs fuse when they train the same weight-tied ResNet architecture on the same data shapes for the same number of
steps: they may differ in everything that lives inside a member (mask mode, density, pattern, mask seed, seed, data
order and augmentation, optimizer, learning rate and schedule, label smoothing, gradient clipping, starting weights,
frozen modules).
"""

import dataclasses
import os

from wtext import models

from .config import Role, TrainConfig, options_with

# Options every member of a fused group must share (Role.SHARED): the architecture (one grouped network), the data's
# shapes and the number of steps (one step runs every member), the device and the numerics of the step.


class FusionError(ValueError):
    """Runs that were asked to train fused cannot be; the message names the runs and the reason."""


def run_name(config: TrainConfig) -> str:
    return config.run_dir


def unfusable_reason(config: TrainConfig) -> str | None:
    """Why this run cannot be a member of any fused group, or None when it can."""
    preset = models.preset_config(config.model)
    if not isinstance(preset, models.TiedResNetConfig):
        return (f"model {config.model} is a {type(preset).__name__.removesuffix('Config')}; only the weight-tied "
                f"ResNets (resnet-*) train fused")
    if config.deq is not None:
        return f"deq={config.deq}: a DEQ twin's solver runs a data-dependent number of steps per member"
    if config.mask_mode == "learned":
        return "mask_mode learned: each run trains its own mask scores, which the fused network does not hold"
    if config.lora is not None:
        return "lora: LoRA adapters change the weights a fused forward reads"
    if config.compile:
        return "compile: the fused step is not compiled (drop compile, or train the run alone)"
    if config.cuda_graph:
        return "cuda_graph: the fused step is not captured in a CUDA graph (drop cuda_graph, or train the run alone)"
    if config.eval_only:
        return "eval_only: an evaluation trains nothing (run it with wtext.train.run)"
    return None


def fusion_key(config: TrainConfig) -> tuple:
    return tuple(getattr(config, name) for name in options_with(Role.SHARED, type(config)))


def group_for_fusion(configs: list[TrainConfig], max_members: int | None = None) -> list[list[int]]:
    """Indices of `configs` grouped into runs that can train fused, in order of first appearance; every index is in
    exactly one group. A run that cannot fuse at all (unfusable_reason) is a group of its own; max_members splits
    larger groups (memory grows with the members). explain_groups says why the groups are what they are."""
    if max_members is not None and max_members < 1:
        raise ValueError(f"max_members must be >= 1; got max_members={max_members}")
    groups: list[list[int]] = []
    open_groups: dict[tuple, list[int]] = {}
    for index, config in enumerate(configs):
        if unfusable_reason(config) is not None:
            groups.append([index])
            continue
        key = fusion_key(config)
        group = open_groups.get(key)
        if group is None or (max_members is not None and len(group) >= max_members):
            group = open_groups[key] = []
            groups.append(group)
        group.append(index)
    return groups


def differing_options(a: TrainConfig, b: TrainConfig) -> list[str]:
    """The shared options on which two runs differ, as 'name=a vs b'."""
    return [f"{name}={getattr(a, name)!r} vs {getattr(b, name)!r}" for name in options_with(Role.SHARED, type(a))
            if getattr(a, name) != getattr(b, name)]


def explain_groups(configs: list[TrainConfig], groups: list[list[int]]) -> list[str]:
    """One line per group: its runs, and for a run alone the reason (cannot fuse, or what separates it from the
    first group)."""
    lines = []
    for number, group in enumerate(groups, start=1):
        names = ", ".join(run_name(configs[i]) for i in group)
        if len(group) > 1:
            lines.append(f"group {number}: {len(group)} runs fused: {names}")
            continue
        reason = unfusable_reason(configs[group[0]])
        if reason is None:
            others = [g for g in groups if g is not group and len(g) and unfusable_reason(configs[g[0]]) is None]
            apart = differing_options(configs[group[0]], configs[others[0][0]]) if others else []
            reason = ("no other run shares its architecture, data and budget" +
                      (f" (vs {run_name(configs[others[0][0]])}: {'; '.join(apart)})" if apart else ""))
        lines.append(f"group {number}: {names} alone: {reason}")
    return lines


def check_fusable(configs: list[TrainConfig]) -> None:
    """Raises FusionError, naming the runs and why, unless all `configs` can train as one fused group."""
    if not configs:
        raise FusionError("no runs to train fused")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FusionError("fused training runs in one process; it does not combine with torchrun (data-parallel "
                          "ranks)")
    for config in configs:
        if not isinstance(config, TrainConfig):
            raise FusionError(f"train_fused takes TrainConfigs; got a {type(config).__name__}")
        reason = unfusable_reason(config)
        if reason is not None:
            raise FusionError(f"{run_name(config)} cannot train fused: {reason}")
    first = configs[0]
    for config in configs[1:]:
        apart = differing_options(config, first)
        if apart:
            shared = ", ".join(options_with(Role.SHARED, type(first)))
            raise FusionError(f"{run_name(config)} cannot train fused with {run_name(first)}: they differ in "
                              f"{'; '.join(apart)} (fused runs share {shared}; "
                              f"group_for_fusion splits such runs into groups)")
    seen: dict[str, int] = {}
    for index, config in enumerate(configs):
        if config.run_dir in seen:
            raise FusionError(f"runs {seen[config.run_dir]} and {index} both write to run_dir={config.run_dir!r}; "
                              f"every member needs its own run directory")
        seen[config.run_dir] = index


def describe_member(config: TrainConfig) -> str:
    """What sets a member apart, for logs: its mask mode and seed, and the options it owns (shared by no group,
    fixed for its whole run) that differ from their defaults."""
    config_type = type(config)
    defaults, values = dataclasses.asdict(config_type()), dataclasses.asdict(config)
    group_wide = set(options_with(Role.SHARED | Role.RESUMABLE, config_type))
    shown = [f"{name}={value}" for name, value in values.items() if name in ("mask_mode", "seed") or
             (name not in group_wide and value != defaults[name])]
    return ", ".join(shown)
