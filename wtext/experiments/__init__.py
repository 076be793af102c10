"""The paper's experiments as commands: python -m wtext.experiments NAME."""

from .definitions import EXPERIMENTS, SCALES
from .sweep import PlanShown, Sweep, markdown_table, run_sweep

__all__ = ["EXPERIMENTS", "PlanShown", "SCALES", "Sweep", "markdown_table", "run_sweep"]
