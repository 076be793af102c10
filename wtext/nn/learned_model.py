"""A model's learned masks as a whole: finding them, their schedule and penalty, freezing them, and fitting a
model to a checkpoint whose masks were frozen."""

import torch
from torch import nn

from .learned_masks import LearnedMasks

SCORES_SUFFIX = ".scores"
BITS_SUFFIX = ".bits"


def learned_masks_of(model: nn.Module) -> list[tuple[str, LearnedMasks]]:
    """(qualified name, module) of every LearnedMasks in the model."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LearnedMasks)]


def configure_learned_masks(model: nn.Module, temperatures: tuple[float, float], penalty_weight: float) -> None:
    """The gumbel estimator's temperature schedule and density-penalty weight, for every learned mask."""
    for _, masks in learned_masks_of(model):
        masks.configure(temperatures, penalty_weight)


def set_mask_progress(model: nn.Module, fraction: float) -> None:
    """Moves every learned mask's temperature schedule to `fraction` of training."""
    for _, masks in learned_masks_of(model):
        masks.set_progress(fraction)


def density_penalty(model: nn.Module) -> torch.Tensor | None:
    """The sum of the learned masks' density penalties, or None when no mask has one."""
    terms = [masks.density_penalty() for _, masks in learned_masks_of(model)
             if masks.estimator == "gumbel" and not masks.frozen and masks.penalty_weight]
    return sum(terms[1:], terms[0]) if terms else None


def freeze_masks(model: nn.Module) -> int:
    """Freezes every learned mask of the model (scores -> bits); returns how many were not frozen yet."""
    learned = [masks for _, masks in learned_masks_of(model) if not masks.frozen]
    for masks in learned:
        masks.freeze()
    return len(learned)


def score_names(model: nn.Module) -> set[str]:
    """The state_dict keys of the model's learned scores."""
    return {name + SCORES_SUFFIX for name, masks in learned_masks_of(model) if not masks.frozen}


def match_frozen_masks(model: nn.Module, state: dict) -> bool:
    """Prepares the model to load `state` (a model state_dict): every learned mask whose bits the state holds (its
    checkpoint was frozen) takes the frozen form. Returns whether any did. A state holding both a mask's scores and
    bits, or bits of the wrong size, is a ValueError naming the entry."""
    changed = False
    for name, masks in learned_masks_of(model):
        bits_key, scores_key = name + BITS_SUFFIX, name + SCORES_SUFFIX
        if bits_key not in state:
            continue
        if scores_key in state:
            raise ValueError(f"the model state holds both {scores_key} and {bits_key}: a learned mask is either "
                             f"trained (scores) or frozen (bits)")
        changed |= not masks.frozen
        masks.prepare_frozen(state[bits_key], bits_key)
    return changed
