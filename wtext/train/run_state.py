"""RunState: where a run stands — epoch and step counters, the epoch's running sums, its training time, the metrics
of finished epochs — and the part of a checkpoint that records it."""

import time
from dataclasses import dataclass, field

import torch

from .running import restore_running, solver_metrics, zero_sums


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the checkpoint holds the last finite state."""


@dataclass
class RunState:
    """running: the epoch's running sums ([len(RUNNING_KEYS)] float64 on the run's device; the epoch driver may make
    it a view of the sums of all the runs it trains at once). time_share: the fraction of the wall time of the
    steps that is this run's (1/K for K runs trained by one fused step, whose summed times stay the wall time)."""

    running: torch.Tensor
    epoch: int = 0
    step_in_epoch: int = 0
    steps_done: int = 0
    seconds: float = 0.0  # training time of the current epoch before the current stretch of steps
    history: list[dict] = field(default_factory=list)  # the metrics of finished epochs
    best: tuple[float, int] = (0.0, 0)  # best test accuracy and its epoch
    last_saved: tuple[int, int] = (0, 0)  # (epoch, step_in_epoch) of the last checkpoint
    last_save_time: float = field(default_factory=time.monotonic)
    stretch_start: float | None = None  # perf_counter() when the current stretch of steps began; None: stopped
    time_share: float = 1.0

    # -- the clock of the epoch ---------------------------------------------------------------------------------
    def start_clock(self) -> None:
        self.stretch_start = time.perf_counter()

    def stop_clock(self) -> None:
        self.seconds = self.epoch_seconds()
        self.stretch_start = None

    def epoch_seconds(self) -> float:
        running = 0.0 if self.stretch_start is None else time.perf_counter() - self.stretch_start
        return self.seconds + running * self.time_share

    # -- progress -----------------------------------------------------------------------------------------------
    def advance(self) -> None:
        self.step_in_epoch += 1
        self.steps_done += 1

    def saved(self) -> None:
        self.last_saved = (self.epoch, self.step_in_epoch)
        self.last_save_time = time.monotonic()

    def seconds_since_save(self) -> float:
        return time.monotonic() - self.last_save_time

    def finish_epoch(self, totals: dict[str, float], test_loss: float, test_accuracy: float, lr: float,
                     eval_time: float, extra: dict | None = None) -> dict:
        """The epoch's metrics record (appended to history), with `extra`'s entries (a learned-mask run's mask
        statistics); the counters, sums and clock start the next epoch."""
        images = totals["images"]
        record = {
            "epoch": self.epoch + 1,
            "train_loss": totals["loss"] / images,
            "train_accuracy": totals["correct"] / images,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "lr": lr,
            "time_s": self.seconds,
            "images_per_second": images / max(self.seconds, 1e-9),
            "eval_time_s": eval_time,
            **solver_metrics(totals),
            **(extra or {}),
        }
        if test_accuracy > self.best[0]:
            self.best = (test_accuracy, self.epoch + 1)
        self.history.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self.running.zero_()  # in place: the driver's view of it stays valid
        self.seconds = 0.0
        return record

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def payload(self) -> dict:
        """The checkpoint entries of the state, but the running sums (the caller reduces them over ranks)."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "steps_done": self.steps_done,
                "seconds": self.epoch_seconds(), "history": self.history, "best": list(self.best)}

    @classmethod
    def from_checkpoint(cls, saved: dict, device: torch.device, keep_sums: bool) -> "RunState":
        """The state a checkpoint recorded. keep_sums: False on every data-parallel rank but 0, which carries the
        sums of all ranks so far (see Trainer.save)."""
        running = restore_running(saved["running"], device) if keep_sums else zero_sums(device)
        state = cls(running, saved["epoch"], saved["step_in_epoch"], saved["steps_done"], saved["seconds"],
                    list(saved["history"]), tuple(saved["best"]))
        state.saved()
        return state

