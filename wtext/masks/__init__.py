"""Learned masks after training: freezing them into bits in a checkpoint (python -m wtext.masks freeze) and
describing them (python -m wtext.masks show; the statistics: wtext.analysis.mask_statistics)."""

from .freeze import freeze_checkpoint

__all__ = ["freeze_checkpoint"]
