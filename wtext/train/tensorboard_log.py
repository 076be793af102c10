"""--tensorboard: a run's scalars as TensorBoard event files in RUN_DIR/tensorboard, written through
torch.utils.tensorboard (the optional `tensorboard` package).

Every scalar's step is the run's global training step, so a run's step and epoch curves share one axis and a resumed
run continues its curves (the events a killed run wrote after its last checkpoint are purged on --resume: its steps
are trained again). Step scalars are the means over the steps between two host reads of the running sums, which the
epoch driver makes anyway (every few steps): logging adds no synchronization of the device.
"""

import math
from pathlib import Path

from .running import RUNNING_KEYS

TENSORBOARD_DIR = "tensorboard"
# The running sums logged as the window's means, and their per-solve / per-walk denominators.
WINDOW_MEANS = {"solver_steps": "solves", "solver_residual": "solves", "backward_solver_steps": "backward_solves",
                "reconstruction_error": "reversible_backwards"}


def summary_writer_class():
    """torch.utils.tensorboard's SummaryWriter; a ValueError saying what to install when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard (or install wtext "
                         "with its extra: pip install --no-build-isolation -e '.[tensorboard]')") from None
    return SummaryWriter


class TensorBoardLog:
    """The event files of one run. window() logs the training means since the previous call of the epoch, epoch()
    an epoch's record of metrics.jsonl; flush() and close() write what is buffered."""

    def __init__(self, run_dir: Path, resumed_at_step: int | None):
        writer_class = summary_writer_class()
        # purge_step: TensorBoard drops the events at or past this step that earlier event files hold.
        self.writer = writer_class(log_dir=str(Path(run_dir) / TENSORBOARD_DIR), purge_step=resumed_at_step)
        self.previous: tuple[int, dict[str, float]] | None = None  # (epoch, running sums at the last window)

    def window(self, epoch: int, step: int, totals: dict[str, float], learning_rate: float,
               images_per_second: float) -> None:
        """totals: the epoch's running sums now (by RUNNING_KEYS name); the sums restart at each epoch."""
        earlier = self.previous[1] if self.previous and self.previous[0] == epoch else dict.fromkeys(RUNNING_KEYS, 0.0)
        delta = {key: totals[key] - earlier[key] for key in RUNNING_KEYS}
        self.previous = (epoch, dict(totals))
        if delta["images"] <= 0:
            return
        scalars = {"train/loss": delta["loss"] / delta["images"], "train/accuracy": delta["correct"] / delta["images"],
                   "train/learning_rate": learning_rate, "train/images_per_second": images_per_second}
        for key, count in WINDOW_MEANS.items():
            if delta[count] > 0:
                scalars[f"train/{key}"] = delta[key] / delta[count]
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def epoch(self, record: dict, step: int) -> None:
        """Every number of the epoch's record (losses, accuracies, lr, time, images/s, DEQ and mask measures) as
        epoch/NAME; NaN measures (a DEQ twin's mask Hamming distance, which has no pair) are left out."""
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
