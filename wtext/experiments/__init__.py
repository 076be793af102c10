"""The paper's experiments as commands: python -m wtext.experiments NAME."""

from .definitions import EXPERIMENTS, SCALES
from .statistics import Comparison, compare, mean_std
from .sweep import PlanShown, Sweep, WorkerFinished, markdown_table

__all__ = ["EXPERIMENTS", "Comparison", "PlanShown", "SCALES", "Sweep", "WorkerFinished", "compare",
           "markdown_table", "mean_std"]
