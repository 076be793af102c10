"""The epoch driver of every training run: fit(trainers, step) trains K runs with one step (a run alone is K = 1,
a fused group K members) — steps, progress, periodic checkpoints, Ctrl-C, the end of each epoch. run(config) is
`python -m wtext.train`."""

import math
import signal
import sys
import threading
import time

import torch

from .distributed import finish_together, shutdown
from .evaluate import evaluate_checkpoint
from .faults import crash_point
from .report import append_metrics
from .running import as_dict
from .trainer import CHECKPOINT, Trainer

# Steps between host reads of the running sums (progress display, the non-finite-loss check, checkpoints by time).
READ_EVERY_STEPS = 10


class Interrupted(Exception):
    """Training stopped at a step's end (Ctrl-C, or --stop-after-steps acting one out); every run's checkpoint was
    saved there."""


class CtrlC:
    """While entered (in the main thread): the first Ctrl-C asks the driver to finish the current step, then
    checkpoint and stop (so the checkpoint is consistent); a second one stops at once (KeyboardInterrupt)."""

    SIGNAL = signal.SIGINT

    def __init__(self, log):
        self.log, self.requested, self.previous = log, False, None

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(self.SIGNAL, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(self.SIGNAL, self.previous)

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("\nCtrl-C: stopping after this step (press again to stop at once)")


def fit(trainers: list[Trainer], step) -> float:
    """Trains `trainers` (started, at the same epoch and step) with `step` (wtext.train.steps) until their last
    epoch; returns the wall time. Ctrl-C or stop_after_steps checkpoints every run and raises Interrupted; a run
    whose loss diverges raises NonFiniteLoss after the others saved their progress."""
    first = trainers[0]
    positions = {(t.state.epoch, t.state.step_in_epoch) for t in trainers}
    if len(positions) > 1:
        raise ValueError(f"runs trained by one step must be at the same epoch and step; got {sorted(positions)}")
    # The runs' running sums as rows of one tensor: a step's increments are added in one operation.
    sums = torch.stack([t.state.running for t in trainers])
    for k, trainer in enumerate(trainers):
        trainer.state.running = sums[k]
        trainer.state.time_share = 1 / len(trainers)
    wall_start = time.perf_counter()
    with CtrlC(first.log) as ctrl_c:
        while first.state.epoch < first.config.epochs:
            bar = progress_bar(first)
            try:
                train_epoch(trainers, step, sums, ctrl_c, bar)
            except KeyboardInterrupt:  # a second Ctrl-C lands anywhere, even inside an optimizer step
                close(bar)
                for trainer in trainers:
                    epoch, position = trainer.state.last_saved
                    trainer.log(f"\nstopped at once; {trainer.run_dir / CHECKPOINT} holds epoch {epoch + 1}, step "
                                f"{position}: continue with the same options plus --resume")
                raise
            except Interrupted:
                close(bar)
                for trainer in trainers:
                    trainer.save()
                    trainer.log(f"\ninterrupted at epoch {trainer.state.epoch + 1}, step "
                                f"{trainer.state.step_in_epoch}: checkpoint saved; continue with the same options "
                                f"plus --resume")
                raise
            close(bar)
            finish_epoch(trainers, step)
    return time.perf_counter() - wall_start


def train_epoch(trainers: list[Trainer], step, sums: torch.Tensor, ctrl_c: CtrlC, bar) -> None:
    first = trainers[0]
    steps_per_epoch = len(first.train_loader)
    for trainer in trainers:
        trainer.state.start_clock()
    epochs = [t.train_loader.epoch(t.state.epoch, start=t.state.step_in_epoch) for t in trainers]
    for batches in zip(*epochs):
        sums += step.train(list(batches))
        for trainer in trainers:
            trainer.state.advance()
        crash_point("step")
        if bar is not None:
            bar.update(1)
        position = first.state.step_in_epoch
        due_by_time = False
        if position % READ_EVERY_STEPS == 0 or position == steps_per_epoch:
            due_by_time = read_sums(trainers, sums, bar)
        budget = first.config.stop_after_steps
        if (budget and first.state.steps_done >= budget) or ctrl_c.requested:
            raise Interrupted
        due = due_by_time or any(t.checkpoint_due_by_steps() for t in trainers)
        if position < steps_per_epoch and due:
            for trainer in trainers:
                trainer.save()
    for trainer in trainers:
        trainer.state.stop_clock()


def read_sums(trainers: list[Trainer], sums: torch.Tensor, bar) -> bool:
    """One host read of the running sums: stops at a diverged run (the others save their progress first, so they
    resume from here), updates the progress bar, and says whether a checkpoint is due by time (decided here, every
    few steps, and agreed by all ranks)."""
    totals = [as_dict(row) for row in sums.tolist()]
    *diverged, due = trainers[0].agreed(*(not math.isfinite(t["loss"]) for t in totals),
                                        any(t.checkpoint_due_by_time() for t in trainers))
    if any(diverged):
        for trainer, bad in zip(trainers, diverged):
            if not bad:
                trainer.save()
        trainers[diverged.index(True)].stop_non_finite()
    for trainer, run_totals in zip(trainers, totals):
        if trainer.tensorboard is not None:
            seconds = max(trainer.state.epoch_seconds(), 1e-9)
            trainer.tensorboard.window(trainer.state.epoch, trainer.state.steps_done, run_totals,
                                       trainer.learning_rate(), run_totals["images"] * trainer.cluster.world / seconds)
    if bar is not None:
        first, images = trainers[0], sum(t["images"] for t in totals)
        seconds = first.state.epoch_seconds() / first.state.time_share  # the group's time
        bar.set_postfix(loss=f"{sum(t['loss'] for t in totals) / images:.3f}",
                        acc=f"{sum(t['correct'] for t in totals) / images:.3f}",
                        img_s=f"{images * first.cluster.world / max(seconds, 1e-9):.0f}")
    return due


def finish_epoch(trainers: list[Trainer], step) -> None:
    """Evaluates every run, records its epoch (checkpoint, metrics.jsonl, the log line)."""
    totals = [t.epoch_totals() for t in trainers]
    for trainer, run_totals in zip(trainers, totals):
        if not math.isfinite(run_totals["loss"]):  # all-reduced: every rank sees the same
            trainer.stop_non_finite()
    eval_start = time.perf_counter()
    results = step.evaluate()
    eval_share = (time.perf_counter() - eval_start) / len(trainers)
    for trainer, run_totals, (test_loss, test_accuracy) in zip(trainers, totals, results):
        record = trainer.state.finish_epoch(run_totals, test_loss, test_accuracy, trainer.learning_rate(),
                                            eval_share, trainer.mask_metrics())
        trainer.save()
        if trainer.cluster.main:
            append_metrics(trainer.run_dir, record)
            crash_point("metrics")
            if trainer.tensorboard is not None:
                trainer.tensorboard.epoch(record, trainer.state.steps_done)
            trainer.log(epoch_line(record) + (" (fused share)" if len(trainers) > 1 else ""))


def epoch_line(record: dict) -> str:
    extra = (f", solver steps {record['solver_steps']:.1f}, residual {record['solver_residual']:.2e}"
             if "solver_steps" in record else "")
    if "mask_hamming" in record:
        hamming = record["mask_hamming"]  # nan with one application (a DEQ twin): no pair to compare
        extra += (", masks: " + ("" if math.isnan(hamming) else f"hamming {hamming:.3f} between applications, ")
                  + f"{record['mask_equal_to_start']:.3f} as at the start")
    if "backward_solver_steps" in record:
        extra += f", backward solver steps {record['backward_solver_steps']:.1f}"
    if "reconstruction_error" in record:
        extra += f", reconstruction error {record['reconstruction_error']:.1e}"
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
            f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f} | "
            f"{record['images_per_second']:.0f} img/s{extra}")


def progress_bar(trainer: Trainer):
    """A tqdm bar over the epoch's steps, when progress is on (a convenience: none without tqdm)."""
    config = trainer.config
    if not (config.progress and trainer.cluster.main):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=len(trainer.train_loader), initial=trainer.state.step_in_epoch, leave=True, file=sys.stdout,
                desc=f"epoch {trainer.state.epoch + 1}/{config.epochs}", dynamic_ncols=True)


def close(bar) -> None:
    if bar is not None:
        bar.close()


def run(config, given=None) -> dict:
    """Trains the run `config` describes (or, with eval_only, evaluates its checkpoint) and returns its summary.
    given: the names of the options the user set, when known (the command line: cli.resolve_command_line);
    evaluation refuses a given model option that differs from the checkpoint's, even at its default value."""
    if config.eval_only:
        return evaluate_checkpoint(config, given)
    trainer = Trainer(config)
    try:
        trainer.start()
        summary = trainer.summarize(fit([trainer], trainer.step))
        if config.freeze_masks and trainer.cluster.main:
            from wtext.masks import freeze_checkpoint  # wtext.masks builds on wtext.train

            report = freeze_checkpoint(trainer.run_dir / CHECKPOINT)
            trainer.log(f"froze {report.masks} learned masks into {report.output} ({report.bytes_after:,} bytes)")
        finish_together(trainer.cluster)
        return summary
    finally:
        trainer.close_logs()
        shutdown(trainer.cluster)

