"""What a model's learned masks became: per tied weight, the density, the mean pairwise Hamming distance between
the applications' masks (against 2p(1-p) for independent random masks and 0 for one shared mask), and the share of
each mask still equal to its seed-derived start."""

import itertools
import statistics

import torch
from torch import nn

from wtext.nn import TiedMaskedWeight


def mean_pairwise_hamming(masks: torch.Tensor) -> float:
    """Mean over pairs of applications of the fraction of elements where their masks differ; masks [L, *shape]
    (bool or 0/1); nan for one application."""
    flat = masks.reshape(masks.shape[0], -1).bool()
    pairs = list(itertools.combinations(range(flat.shape[0]), 2))
    if not pairs:
        return float("nan")
    return statistics.mean((flat[a] != flat[b]).float().mean().item() for a, b in pairs)


def learned_mask_statistics(model: nn.Module) -> list[dict]:
    """Per tied weight with learned masks: name, applications, density, pairwise Hamming (measured, and the value
    for independent random masks of that density), and the share of mask entries equal to the seed-derived start
    (1.0 at step 0 with --mask-init seed)."""
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, TiedMaskedWeight) or module.learned is None:
            continue
        learned = module.learned
        masks = learned.masks()
        density = masks.float().mean().item()
        start = learned.seed_masks().bool().to(masks.device)
        rows.append({
            "weight": name,
            "applications": learned.applications,
            "density": density,
            "hamming": mean_pairwise_hamming(masks),
            "hamming_independent": 2 * learned.density * (1 - learned.density),
            "equal_to_start": (masks == start).float().mean().item(),
            "frozen": learned.frozen,
        })
    return rows


def mean_over_weights(rows: list[dict], key: str) -> float:
    values = [row[key] for row in rows if row[key] == row[key]]  # nan-free
    return statistics.mean(values) if values else float("nan")
