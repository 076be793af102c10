"""The paper's experiments as commands: python -m wtext.experiments NAME."""

from .definitions import EXPERIMENTS, SCALES
from .sweep import markdown_table, run_sweep

__all__ = ["EXPERIMENTS", "SCALES", "markdown_table", "run_sweep"]
