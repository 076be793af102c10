"""The training and evaluation loop of `python -m wtext.train`."""

import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wtext import models
from wtext.data import DeviceLoader, load_dataset
from wtext.nn import MaskSpec

from .checkpoint import load_checkpoint, restore_rng_state, rng_state, save_atomic
from .config import TrainConfig
from .distributed import Cluster, all_reduce_sum, init_cluster, shutdown
from .report import append_metrics, final_table, plot_curves, read_metrics, truncate_metrics
from .schedule import warmup_cosine

# Options that may differ between a run and its resumption; any other difference is an error.
RESUMABLE_CHANGES = {"epochs", "progress", "resume", "stop_after_steps", "device", "eval_only", "checkpoint",
                     "run_dir"}


class Interrupted(Exception):
    """Raised by --stop-after-steps to act out a Ctrl-C."""


def select_device(name: str, cluster: Cluster) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but no CUDA device is visible")
        if cluster.active:
            device = torch.device("cuda", cluster.local_rank)
    return device


def model_for(config: TrainConfig, num_classes: int) -> nn.Module:
    preset = models.preset_config(config.model)
    overrides = {"num_classes": num_classes}
    if config.width is not None:
        overrides["width"] = config.width
    if config.depth is not None:
        overrides["depth"] = config.depth
    if config.deq is not None:
        overrides["deq"] = config.deq
    density = preset.mask.density if config.density is None else config.density
    overrides["mask"] = MaskSpec(mode=config.mask_mode, density=density, pattern=config.pattern, nm=config.nm_pair(),
                                 seed=config.mask_seed)
    return models.build_model(config.model, **overrides)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_scalar(value: float, device: torch.device) -> torch.Tensor:
    """A float32 scalar made on the device by a fill kernel (torch.tensor would copy a host value, which can
    synchronize)."""
    return torch.full((), float(value), device=device)


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        kind = "cuda" if config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available()) \
            else "cpu"
        self.cluster = init_cluster(kind)
        self.device = select_device(config.device, self.cluster)
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        seed_everything(config.seed)
        self.run_dir = Path(config.run_dir)
        cuda = self.device.type == "cuda"
        world = self.cluster.world
        if config.batch_size % world:
            raise ValueError(f"batch_size must be divisible by the number of ranks; got batch_size="
                             f"{config.batch_size}, ranks={world}")
        if world > 1 and config.interleave != 1:
            raise ValueError("interleave emulates a multi-rank run in one process; do not combine it with torchrun")
        self.log(f"loading {config.dataset} ...")
        self.data = load_dataset(config.dataset, config.data_dir, device=self.device,
                                 synthetic_train=config.synthetic_train, synthetic_test=config.synthetic_test,
                                 seed=config.seed, shard=(self.cluster.rank, world))
        channels_last = config.channels_last and cuda
        self.train_loader = DeviceLoader(self.data.train, config.batch_size // world, self.data.mean, self.data.std,
                                         train=True, seed=config.seed, augment=config.augment,
                                         channels_last=channels_last, rank=self.cluster.rank,
                                         interleave=config.interleave)
        if len(self.train_loader) == 0:
            raise ValueError(f"batch_size={config.batch_size} is larger than the training set "
                             f"({len(self.data.train) * world} images): no full batch")
        self.test_loader = DeviceLoader(self.data.test, config.batch_size, self.data.mean, self.data.std,
                                        train=False, channels_last=channels_last)
        self.model = model_for(config, self.data.num_classes).to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.core = self.model  # the unwrapped model: state dicts, DEQ statistics, accounting
        if self.cluster.active:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if cuda else None)
        self.forward = torch.compile(self.model) if config.compile else self.model
        parameters = self.core.parameters()
        if config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        steps_per_epoch = len(self.train_loader)
        self.scheduler = warmup_cosine(self.optimizer, steps_per_epoch * config.epochs,
                                       round(config.warmup_epochs * steps_per_epoch))
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.bf16 and cuda)
        self.epoch, self.step_in_epoch, self.steps_done = 0, 0, 0
        self.totals = self.empty_totals()
        self.pending: torch.Tensor | None = None
        self.interrupt_requested = False
        self.best = (0.0, 0)

    # -- helpers ----------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.cluster.main:
            print(message, flush=True)

    @staticmethod
    def empty_totals() -> dict:
        return {"loss": 0.0, "correct": 0.0, "images": 0.0, "solver_steps": 0.0, "solver_residual": 0.0,
                "solves": 0.0, "seconds": 0.0}

    def checkpoint_payload(self) -> dict:
        return {
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "steps_done": self.steps_done,
            "totals": self.totals,
            "best": self.best,
            "rng": rng_state(),
            "config": dataclasses.asdict(self.config),
        }

    def save(self) -> None:
        if self.cluster.main:
            save_atomic(self.checkpoint_payload(), self.run_dir / "checkpoint.pt")

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.device)
        saved, current = state["config"], dataclasses.asdict(self.config)
        changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
        if changed:
            name = changed[0]
            raise ValueError(f"{path} was written with {name}={saved.get(name)!r}, this run has "
                             f"{name}={current[name]!r}; resume with the same options (or another --run-dir)")
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch, self.steps_done = state["epoch"], state["step_in_epoch"], state["steps_done"]
        self.totals, self.best = state["totals"], tuple(state["best"])
        restore_rng_state(state["rng"])

    # -- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        # Summed on the device and read back once, not once per batch.
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for images, labels in self.test_loader.epoch(0):
            with self.autocast:
                logits = self.core(images)
            sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
            sums[1] += (logits.argmax(1) == labels).sum()
        loss, correct = sums.tolist()
        count = len(self.data.test)
        return loss / count, correct / count

    # -- training ---------------------------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        config = self.config
        self.model.train()
        with self.autocast:
            logits = self.forward(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            if getattr(self.core, "deq_outputs", None):  # a DEQ twin's Jacobian penalty (on the loss's device)
                loss_with_penalties = loss + self.core.regularization().to(loss.device)
            else:
                loss_with_penalties = loss
        self.optimizer.zero_grad(set_to_none=True)
        loss_with_penalties.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.core.parameters(), config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        # Accumulated on the device and read back only every few steps (flush_totals): a per-step .item() would
        # stall the GPU pipeline once per step.
        values = [loss.detach().float() * labels.numel(), (logits.argmax(1) == labels).sum().float(),
                  device_scalar(labels.numel(), self.device)]
        deq_outputs = getattr(self.core, "deq_outputs", [])
        values += [sum((out.stats.steps.float().mean() for out in deq_outputs), device_scalar(0, self.device)),
                   sum((out.stats.lowest.float().mean() for out in deq_outputs), device_scalar(0, self.device)),
                   device_scalar(len(deq_outputs), self.device)]
        step_values = torch.stack([v.to(self.device) for v in values])
        self.pending = step_values if self.pending is None else self.pending + step_values

    def flush_totals(self) -> None:
        """Moves the device-side sums of the last steps into the totals (one host read)."""
        if self.pending is None:
            return
        for key, value in zip(("loss", "correct", "images", "solver_steps", "solver_residual", "solves"),
                              self.pending.tolist()):
            self.totals[key] += value
        self.pending = None

    def train_epoch(self, progress) -> None:
        start = time.perf_counter()
        for images, labels in self.train_loader.epoch(self.epoch, start=self.step_in_epoch):
            self.train_step(images, labels)
            self.step_in_epoch += 1
            self.steps_done += 1
            if progress is not None:
                progress.update(1)
                if self.step_in_epoch % 10 == 0 or self.step_in_epoch == len(self.train_loader):
                    self.flush_totals()
                    t = self.totals
                    elapsed = t["seconds"] + time.perf_counter() - start
                    progress.set_postfix(loss=f"{t['loss'] / t['images']:.3f}",
                                         acc=f"{t['correct'] / t['images']:.3f}",
                                         img_s=f"{t['images'] * self.cluster.world / max(elapsed, 1e-9):.0f}")
            stop_requested = self.config.stop_after_steps and self.steps_done >= self.config.stop_after_steps
            if stop_requested or self.interrupt_requested:
                self.flush_totals()
                self.totals["seconds"] += time.perf_counter() - start
                raise Interrupted
        self.flush_totals()
        self.totals["seconds"] += time.perf_counter() - start

    def finish_epoch(self) -> dict:
        t = self.totals
        loss, correct, images, steps, residual, solves = all_reduce_sum(
            [t["loss"], t["correct"], t["images"], t["solver_steps"], t["solver_residual"], t["solves"]],
            self.device, self.cluster)
        eval_start = time.perf_counter()
        test_loss, test_accuracy = self.evaluate()
        eval_time = time.perf_counter() - eval_start
        record = {
            "epoch": self.epoch + 1,
            "train_loss": loss / images,
            "train_accuracy": correct / images,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "lr": self.scheduler.get_last_lr()[0],
            "time_s": t["seconds"],
            "images_per_second": images / max(t["seconds"], 1e-9),
            "eval_time_s": eval_time,
        }
        if solves:
            record["solver_steps"] = steps / solves
            record["solver_residual"] = residual / solves
        if test_accuracy > self.best[0]:
            self.best = (test_accuracy, self.epoch + 1)
        self.epoch += 1
        self.step_in_epoch = 0
        self.totals = self.empty_totals()
        return record

    def prepare_run_dir(self) -> None:
        if not self.cluster.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config.resume:
            truncate_metrics(self.run_dir, self.epoch)
        else:
            for name in ("metrics.jsonl", "summary.json", "curves.png", "checkpoint.pt"):
                (self.run_dir / name).unlink(missing_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")

    def _on_sigint(self, signum, frame) -> None:
        """First Ctrl-C: finish the current step, then checkpoint and stop (so the checkpoint is consistent).
        A second Ctrl-C stops at once."""
        if self.interrupt_requested:
            raise KeyboardInterrupt
        self.interrupt_requested = True
        self.log("\nCtrl-C: stopping after this step (press again to stop at once)")

    def fit(self) -> dict:
        config = self.config
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        else:
            previous_handler = None
        try:
            return self._fit()
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)

    def _fit(self) -> dict:
        config = self.config
        if config.resume:
            self.restore(self.run_dir / "checkpoint.pt")
            self.log(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}")
        self.prepare_run_dir()
        facts = models.describe(self.core)
        self.log(f"{config.model}{' (DEQ ' + config.deq + ')' if config.deq else ''}: {facts['stored']:,} parameters "
                 f"({facts['effective_per_application']:,.0f} effective per application), mask {config.mask_mode}/"
                 f"{config.pattern}, {config.dataset}: {len(self.data.train) * self.cluster.world} train / "
                 f"{len(self.data.test)} test images, device {self.device}, {self.cluster.world} rank(s)")
        wall_start = time.perf_counter()
        try:
            from tqdm import tqdm
        except ImportError:  # progress bars are a convenience, not a requirement
            tqdm = None
        while self.epoch < config.epochs:
            show = config.progress and self.cluster.main and tqdm is not None
            progress = tqdm(total=len(self.train_loader), initial=self.step_in_epoch, leave=True, file=sys.stdout,
                            desc=f"epoch {self.epoch + 1}/{config.epochs}", dynamic_ncols=True) if show else None
            try:
                self.train_epoch(progress)
            except (KeyboardInterrupt, Interrupted):
                if progress is not None:
                    progress.close()
                self.flush_totals()
                self.save()
                self.log(f"\ninterrupted at epoch {self.epoch + 1}, step {self.step_in_epoch}: checkpoint saved; "
                         f"continue with the same options plus --resume")
                raise
            if progress is not None:
                progress.close()
            record = self.finish_epoch()
            self.save()
            if self.cluster.main:
                append_metrics(self.run_dir, record)
                extra = (f", solver steps {record['solver_steps']:.1f}, residual {record['solver_residual']:.2e}"
                         if "solver_steps" in record else "")
                self.log(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc "
                         f"{record['train_accuracy']:.4f} | test loss {record['test_loss']:.4f} acc "
                         f"{record['test_accuracy']:.4f} | {record['images_per_second']:.0f} img/s{extra}")
        return self.summarize(facts, time.perf_counter() - wall_start)

    def summarize(self, facts: dict, wall_time: float) -> dict:
        records = read_metrics(self.run_dir) if self.cluster.main else []
        summary = {
            "model": self.config.model + (f" (DEQ {self.config.deq})" if self.config.deq else ""),
            "parameters": facts["stored"],
            "effective_parameters": facts["effective_per_application"],
            "flops_per_image": facts["flops_effective"],
            "epochs": self.epoch,
            "best_test_accuracy": self.best[0],
            "best_epoch": self.best[1],
            "final_test_accuracy": records[-1]["test_accuracy"] if records else math.nan,
            "images_per_second": float(np.mean([r["images_per_second"] for r in records])) if records else 0.0,
            "wall_time_s": wall_time,
            "run_dir": str(self.run_dir),
        }
        if self.cluster.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            plot_curves(self.run_dir, records)
            self.log("\n" + final_table(summary))
        return summary

    def evaluate_checkpoint(self) -> dict:
        path = Path(self.config.checkpoint) if self.config.checkpoint else self.run_dir / "checkpoint.pt"
        state = load_checkpoint(path, self.device)
        self.core.load_state_dict(state["model"])
        loss, accuracy = self.evaluate()
        self.log(f"{path}: test loss {loss:.4f}, test accuracy {accuracy:.4f} ({len(self.data.test)} images)")
        return {"test_loss": loss, "test_accuracy": accuracy, "checkpoint": str(path)}


def run(config: TrainConfig) -> dict:
    trainer = Trainer(config)
    try:
        return trainer.evaluate_checkpoint() if config.eval_only else trainer.fit()
    finally:
        shutdown(trainer.cluster)
