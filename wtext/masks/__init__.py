"""Learned masks after training: freezing them into bits in a checkpoint (python -m wtext.masks freeze) and
describing them (python -m wtext.masks show)."""

from .freeze import freeze_checkpoint
from .statistics import learned_mask_statistics

__all__ = ["freeze_checkpoint", "learned_mask_statistics"]
