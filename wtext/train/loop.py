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

from wtext import lora, models
from wtext.data import DeviceLoader, load_dataset
from wtext.safe_files import write_text_atomic

from .checkpoint import load_checkpoint, restore_rng_state, rng_state, save_atomic
from .config import DATA_OPTIONS, MODEL_OPTIONS, TrainConfig
from .distributed import Cluster, all_reduce_sum, finish_together, init_cluster, shutdown
from .faults import crash_point
from .graphed_step import GraphedTrainStep, capturable_adam, fit_loaded_optimizer, portable_optimizer_state
from .model_builder import adapt_for_training, load_initial_weights, model_for
from .report import append_metrics, final_table, plot_curves, write_metrics
from .schedule import warmup_cosine

# Options that may differ between a run and its resumption; any other difference is an error. deq_check_every
# only ends solves once every sample has stopped changing: the same numbers, sooner.
RESUMABLE_CHANGES = {"epochs", "progress", "resume", "stop_after_steps", "device", "eval_only", "checkpoint",
                     "run_dir", "checkpoint_every_steps", "checkpoint_every_seconds", "deq_check_every", "cuda_graph"}

def changed_options(saved: dict, config: TrainConfig) -> list[str]:
    """The options of `config` that differ from a run's saved config, beyond those a resumption may change. A
    config saved before an option existed was made with that option's default."""
    current, defaults = dataclasses.asdict(config), dataclasses.asdict(TrainConfig())
    return sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != current[k])


def same_config(run_dir: Path, config: TrainConfig) -> bool:
    """Whether run_dir/config.json was written for these options (up to those a resumption may change)."""
    path = run_dir / "config.json"
    return path.is_file() and not changed_options(json.loads(path.read_text()), config)


def finished_summary(config: TrainConfig) -> dict | None:
    """The summary of a run finished before in config.run_dir with the same options and epochs, or None."""
    run_dir = Path(config.run_dir)
    path = run_dir / "summary.json"
    if not path.is_file() or not same_config(run_dir, config):
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("epochs") == config.epochs else None


# The running sums of an epoch, in the order of the device tensor that accumulates them. solver_steps: the batch
# mean of each forward solve's steps, summed over solves (solves counts them); backward_solver_steps: the same for
# the adjoint solves of implicit backward (backward_solves counts them). New sums go at the end: a checkpoint holds
# the tensor, and one written with fewer keys is padded on restore (see restore_running).
RUNNING_KEYS = ("loss", "correct", "images", "solver_steps", "solver_residual", "solves", "backward_solver_steps",
                "backward_solves")

# Steps between host reads of the running sums (progress display and the non-finite-loss check).
READ_EVERY_STEPS = 10


class Interrupted(Exception):
    """Raised by --stop-after-steps to act out a Ctrl-C."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the checkpoint holds the last finite state."""


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_scalar(value: float, device: torch.device) -> torch.Tensor:
    """A float32 scalar made on the device by a fill kernel (torch.tensor would copy a host value, which can
    synchronize)."""
    return torch.full((), float(value), device=device)


def restore_running(saved: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The running sums of a checkpoint as a [len(RUNNING_KEYS)] float64 tensor on `device`. A checkpoint written
    before the last keys existed (backward_solver_steps, backward_solves) holds a prefix of them: the missing sums
    start at zero, so the resumed epoch's means of those keys cover the steps after the resumption (sum and count
    alike), and the other keys continue exactly."""
    saved = saved.to(device, torch.float64).flatten()
    if saved.numel() > len(RUNNING_KEYS):
        raise ValueError(f"the checkpoint holds {saved.numel()} running sums, this wtext knows {len(RUNNING_KEYS)} "
                         f"({', '.join(RUNNING_KEYS)}): it was written by a newer wtext; resume it with that version")
    missing = len(RUNNING_KEYS) - saved.numel()
    return torch.cat([saved, saved.new_zeros(missing)]) if missing else saved


def settings_for_evaluation(config: TrainConfig, trained: dict, path: Path) -> TrainConfig:
    """`config` with the model and mask settings the checkpoint was trained with: a differently masked network
    would report another network's accuracy. An option the user set to something else is an error; one left at
    its default takes the trained value."""
    defaults = TrainConfig()
    # The data it was trained on, unless another is asked for (evaluating on other data is legitimate).
    updates = {name: trained[name] for name in DATA_OPTIONS if name in trained
               and getattr(config, name) == getattr(defaults, name) != trained[name]}
    for name in MODEL_OPTIONS:
        given = getattr(config, name)
        if name not in trained or trained[name] == given:
            continue
        if given != getattr(defaults, name):
            raise ValueError(f"{path} was trained with {name}={trained[name]!r}; --eval-only evaluates the model as "
                             f"it was trained, so {name}={given!r} cannot apply (drop the option)")
        updates[name] = trained[name]
    return dataclasses.replace(config, **updates) if updates else config


class Trainer:
    def __init__(self, config: TrainConfig):
        self.run_dir = Path(config.run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"run_dir must be a directory; {self.run_dir} is a file")
        self.evaluated_state = None
        if config.eval_only:
            path = self.evaluated_checkpoint_path(config)
            self.evaluated_state = load_checkpoint(path, "cpu")
            config = settings_for_evaluation(config, self.evaluated_state.get("config", {}), path)
        self.config = config
        kind = "cuda" if config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available()) \
            else "cpu"
        self.cluster = init_cluster(kind)
        self.device = select_device(config.device, self.cluster)
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        seed_everything(config.seed)
        self.build_data()
        self.build_model()
        self.build_optimizer()
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=config.bf16 and self.device.type == "cuda")
        self.epoch, self.step_in_epoch, self.steps_done = 0, 0, 0
        # Running sums of the epoch (RUNNING_KEYS), accumulated on the device in float64 and checkpointed as they
        # are, so a resumed epoch adds the same numbers in the same order as an uninterrupted one.
        self.running = self.zero_running()
        self.seconds = 0.0  # training time of the current epoch before the current stretch of steps
        self.stretch_start = time.perf_counter()
        self.history: list[dict] = []  # the metrics of finished epochs; metrics.jsonl is written from it
        self.last_saved = (0, 0)
        self.last_save_time = time.monotonic()
        self.interrupt_requested = False
        self.best = (0.0, 0)

    # -- building -----------------------------------------------------------------------------------------------
    def build_data(self) -> None:
        config, world = self.config, self.cluster.world
        if config.batch_size % world:
            raise ValueError(f"batch_size must be divisible by the number of ranks; got batch_size="
                             f"{config.batch_size}, ranks={world}")
        if world > 1 and config.interleave != 1:
            raise ValueError("interleave emulates a multi-rank run in one process; do not combine it with torchrun")
        self.log(f"loading {config.dataset} ...")
        self.data = self.load_data(config.dataset, config.data_dir, device=self.device,
                                   synthetic_train=config.synthetic_train, synthetic_test=config.synthetic_test,
                                   seed=config.seed, shard=(self.cluster.rank, world))
        self.channels_last = config.channels_last and self.device.type == "cuda"
        self.train_loader = DeviceLoader(self.data.train, config.batch_size // world, self.data.mean, self.data.std,
                                         train=True, seed=config.seed, augment=config.augment, flip=self.data.flip,
                                         channels_last=self.channels_last, rank=self.cluster.rank,
                                         interleave=config.interleave)
        if len(self.train_loader) == 0 and not config.eval_only:
            raise ValueError(f"batch_size={config.batch_size} is larger than the training set "
                             f"({len(self.data.train) * world} images): no full batch")
        self.test_loader = DeviceLoader(self.data.test, config.batch_size, self.data.mean, self.data.std,
                                        train=False, channels_last=self.channels_last)

    def load_data(self, name: str, data_dir, **options):
        """The run's data set (wtext.data.load_dataset); a fused group's members share theirs through this."""
        return load_dataset(name, data_dir, **options)

    def build_model(self) -> None:
        config = self.config
        model = model_for(config, self.data.num_classes)
        # --init-from starts a new run only: a resumed or evaluated run loads its own checkpoint over everything.
        if config.init_from is not None and not config.resume and not config.eval_only:
            load_initial_weights(model, config, self.log)
            self.log(f"initialized from {config.init_from}")
        adapt_for_training(model, config)  # --lora / --train-only: adapters, frozen weights
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.core = self.model  # the unwrapped model: state dicts, DEQ statistics, accounting
        if self.cluster.active:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(self.model) if config.compile else self.model

    def build_optimizer(self) -> None:
        config = self.config
        parameters = [p for p in self.core.parameters() if p.requires_grad]  # --lora, --train-only freeze the rest
        if not parameters:
            raise ValueError("nothing to train: every parameter of the model is frozen (check --train-only)")
        self.graphed = None
        if config.cuda_graph:
            self.graphed = GraphedTrainStep(self)  # refuses, naming why, what it cannot capture
            self.optimizer = capturable_adam(parameters, config.lr, config.weight_decay, self.device)
        elif config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        steps_per_epoch = len(self.train_loader)
        self.scheduler = warmup_cosine(self.optimizer, steps_per_epoch * config.epochs,
                                       round(config.warmup_epochs * steps_per_epoch))

    # -- helpers ----------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.cluster.main:
            print(message, flush=True)

    def zero_running(self) -> torch.Tensor:
        return torch.zeros(len(RUNNING_KEYS), dtype=torch.float64, device=self.device)

    def epoch_seconds(self) -> float:
        return self.seconds + time.perf_counter() - self.stretch_start

    def checkpoint_payload(self) -> dict:
        return {
            "model": self.core.state_dict(),
            "optimizer": portable_optimizer_state(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "steps_done": self.steps_done,
            "seconds": self.epoch_seconds(),
            "history": self.history,
            "best": list(self.best),
            "rng": rng_state(),
            "config": dataclasses.asdict(self.config),
        }

    def agreed(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank (one all-reduce under torchrun): ranks must take the same
        branch at a checkpoint or a stop, or the next collective hangs."""
        if not self.cluster.active:
            return list(flags)
        return [total > 0 for total in all_reduce_sum([float(flag) for flag in flags], self.device, self.cluster)]

    def check_finite(self) -> None:
        """Raises NonFiniteLoss if the epoch's loss sum or any parameter is NaN or infinite, on any rank."""
        finite = torch.stack([self.running[0].isfinite()] +
                             [p.detach().isfinite().all() for p in self.core.parameters()]).all()
        (bad,) = self.agreed(not bool(finite))
        if not bad:
            return
        self.stop_non_finite()

    def stop_non_finite(self) -> None:
        epoch, step = self.last_saved
        raise NonFiniteLoss(
            f"the training loss became non-finite in epoch {self.epoch + 1} (by step {self.step_in_epoch} of "
            f"{len(self.train_loader)}, learning rate {self.scheduler.get_last_lr()[0]:.3g}); training stopped. "
            f"{self.run_dir / 'checkpoint.pt'} holds the last finite state (epoch {epoch + 1}, step {step}). "
            f"Lower --lr, set --grad-clip, or check the data")

    def save(self) -> None:
        """Checkpoints the run, after checking that what it would save is finite."""
        self.check_finite()
        running = self.running.cpu()
        if self.cluster.active:  # the ranks' running sums, summed (rank 0 restores them, the others start at 0)
            running = torch.tensor(all_reduce_sum(running.tolist(), self.device, self.cluster), dtype=torch.float64)
        if self.cluster.main:
            save_atomic({**self.checkpoint_payload(), "running": running}, self.run_dir / "checkpoint.pt")
        self.last_saved = (self.epoch, self.step_in_epoch)
        self.last_save_time = time.monotonic()
        crash_point("checkpoint")

    def checkpoint_due_by_steps(self) -> bool:
        every = self.config.checkpoint_every_steps
        return bool(every) and self.steps_done % every == 0

    def checkpoint_due_by_time(self) -> bool:
        every = self.config.checkpoint_every_seconds
        return bool(every) and time.monotonic() - self.last_save_time >= every

    def load_model_state(self, state: dict, path: Path) -> None:
        try:
            self.core.load_state_dict(state["model"])
        except RuntimeError as error:
            details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
            detail = details[0] if details else str(error)
            raise ValueError(f"{path}: its weights do not fit the model of this run ({self.config.model}): "
                             f"{detail[:300]}") from None

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.device)
        saved = state["config"]
        changed = changed_options(saved, self.config)
        if changed:
            name = changed[0]
            written = saved.get(name, getattr(TrainConfig(), name))
            raise ValueError(f"{path} was written with {name}={written!r}, this run has "
                             f"{name}={getattr(self.config, name)!r}; resume with the same options (or another "
                             f"--run-dir)")
        self.load_model_state(state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        fit_loaded_optimizer(self.optimizer, capturable=self.graphed is not None)
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch, self.steps_done = state["epoch"], state["step_in_epoch"], state["steps_done"]
        self.running = restore_running(state["running"], self.device)
        if self.cluster.rank != 0:  # rank 0 carries the sums of all ranks so far (see save)
            self.running = self.zero_running()
        self.seconds = state["seconds"]
        self.history, self.best = list(state["history"]), tuple(state["best"])
        self.last_saved = (self.epoch, self.step_in_epoch)
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
        if self.graphed is not None:
            self.graphed.step(images, labels)
            return
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
        # Accumulated on the device and read back only every few steps: a per-step .item() would stall the GPU
        # pipeline once per step.
        values = [loss.detach().float() * labels.numel(), (logits.argmax(1) == labels).sum().float(),
                  device_scalar(labels.numel(), self.device)]
        deq_outputs = getattr(self.core, "deq_outputs", [])
        values += [sum((out.stats.steps.float().mean() for out in deq_outputs), device_scalar(0, self.device)),
                   sum((out.stats.lowest.float().mean() for out in deq_outputs), device_scalar(0, self.device)),
                   device_scalar(len(deq_outputs), self.device)]
        # The adjoint solves ran inside loss_with_penalties.backward() above, which filled backward_stats (implicit
        # backward only; phantom and one-step gradients have none).
        adjoint = [stats for out in deq_outputs for stats in out.backward_stats]
        values += [sum((stats.steps.float().mean() for stats in adjoint), device_scalar(0, self.device)),
                   device_scalar(len(adjoint), self.device)]
        self.running += torch.stack([v.to(self.device) for v in values]).double()

    def read_running(self, progress) -> bool:
        """One host read of the running sums: stops a diverged run, updates the progress bar, and says whether a
        checkpoint is due by time (decided here, every few steps, and agreed by all ranks)."""
        totals = dict(zip(RUNNING_KEYS, self.running.tolist()))
        diverged, due = self.agreed(not math.isfinite(totals["loss"]), self.checkpoint_due_by_time())
        if diverged:
            self.stop_non_finite()
        if progress is not None:
            progress.set_postfix(loss=f"{totals['loss'] / totals['images']:.3f}",
                                 acc=f"{totals['correct'] / totals['images']:.3f}",
                                 img_s=f"{totals['images'] * self.cluster.world / max(self.epoch_seconds(), 1e-9):.0f}")
        return due

    def train_epoch(self, progress) -> None:
        self.stretch_start = time.perf_counter()
        for images, labels in self.train_loader.epoch(self.epoch, start=self.step_in_epoch):
            self.train_step(images, labels)
            self.step_in_epoch += 1
            self.steps_done += 1
            crash_point("step")
            if progress is not None:
                progress.update(1)
            due_by_time = False
            if self.step_in_epoch % READ_EVERY_STEPS == 0 or self.step_in_epoch == len(self.train_loader):
                due_by_time = self.read_running(progress)
            stop_requested = self.config.stop_after_steps and self.steps_done >= self.config.stop_after_steps
            if stop_requested or self.interrupt_requested:
                raise Interrupted
            if self.step_in_epoch < len(self.train_loader) and (due_by_time or self.checkpoint_due_by_steps()):
                self.save()
        self.seconds = self.epoch_seconds()

    def finish_epoch(self) -> dict:
        totals = dict(zip(RUNNING_KEYS, all_reduce_sum(self.running.tolist(), self.device, self.cluster)))
        if not math.isfinite(totals["loss"]):  # the sums are all-reduced: every rank sees the same
            self.stop_non_finite()
        eval_start = time.perf_counter()
        test_loss, test_accuracy = self.evaluate()
        eval_time = time.perf_counter() - eval_start
        images = totals["images"]
        record = {
            "epoch": self.epoch + 1,
            "train_loss": totals["loss"] / images,
            "train_accuracy": totals["correct"] / images,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "lr": float(self.scheduler.get_last_lr()[0]),  # a device tensor under --cuda-graph
            "time_s": self.seconds,
            "images_per_second": images / max(self.seconds, 1e-9),
            "eval_time_s": eval_time,
        }
        if totals["solves"]:
            record["solver_steps"] = totals["solver_steps"] / totals["solves"]
            record["solver_residual"] = totals["solver_residual"] / totals["solves"]
        if totals["backward_solves"]:
            record["backward_solver_steps"] = totals["backward_solver_steps"] / totals["backward_solves"]
        if test_accuracy > self.best[0]:
            self.best = (test_accuracy, self.epoch + 1)
        self.history.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self.running = self.zero_running()
        self.seconds = 0.0
        self.stretch_start = time.perf_counter()
        return record

    def prepare_run_dir(self) -> None:
        if not self.cluster.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config.resume:
            # The checkpoint is the record of what finished: metrics written after it (or lost before it was
            # followed by a metrics line) are rewritten from it.
            write_metrics(self.run_dir, self.history)
        else:
            for name in ("metrics.jsonl", "summary.json", "curves.png", "checkpoint.pt", "adapter.pt"):
                (self.run_dir / name).unlink(missing_ok=True)
        write_text_atomic(self.run_dir / "config.json", json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")

    def _on_sigint(self, signum, frame) -> None:
        """First Ctrl-C: finish the current step, then checkpoint and stop (so the checkpoint is consistent).
        A second Ctrl-C stops at once."""
        if self.interrupt_requested:
            raise KeyboardInterrupt
        self.interrupt_requested = True
        self.log("\nCtrl-C: stopping after this step (press again to stop at once)")

    def fit(self) -> dict:
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        else:
            previous_handler = None
        try:
            return self._fit()
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)

    def start(self) -> None:
        """What comes before the first step: the checkpoint restored (--resume), the run directory prepared, and
        (a new run) the starting state saved, so a run killed before its first periodic checkpoint can resume."""
        checkpoint = self.run_dir / "checkpoint.pt"
        if self.config.resume:
            if not checkpoint.exists():
                raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir} (the run did not start "
                                        f"training there); run without --resume to start it")
            self.restore(checkpoint)
            self.log(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}")
        self.prepare_run_dir()
        if not self.config.resume:
            self.save()

    def _fit(self) -> dict:
        config = self.config
        self.start()
        facts = models.describe(self.core)
        self.log(f"{config.model}{' (DEQ ' + config.deq + ')' if config.deq else ''}: {facts['stored']:,} parameters "
                 f"({facts['effective_per_application']:,.0f} effective per application{self.trainable_note()}), "
                 f"mask {config.mask_mode}/"
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
            except KeyboardInterrupt:
                # A second Ctrl-C lands anywhere, even inside an optimizer step: the last checkpoint stays.
                if progress is not None:
                    progress.close()
                self.log(f"\nstopped at once; {self.run_dir / 'checkpoint.pt'} holds epoch {self.last_saved[0] + 1}, "
                         f"step {self.last_saved[1]}: continue with the same options plus --resume")
                raise
            except Interrupted:
                if progress is not None:
                    progress.close()
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
                crash_point("metrics")
                extra = (f", solver steps {record['solver_steps']:.1f}, residual {record['solver_residual']:.2e}"
                         if "solver_steps" in record else "")
                if "backward_solver_steps" in record:
                    extra += f", backward solver steps {record['backward_solver_steps']:.1f}"
                self.log(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc "
                         f"{record['train_accuracy']:.4f} | test loss {record['test_loss']:.4f} acc "
                         f"{record['test_accuracy']:.4f} | {record['images_per_second']:.0f} img/s{extra}")
        return self.summarize(facts, time.perf_counter() - wall_start)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.core.parameters() if p.requires_grad)

    def trainable_note(self) -> str:
        """', N trainable' when --lora or --train-only froze some parameters."""
        trainable = self.trainable_parameters()
        return f", {trainable:,} trainable" if trainable < sum(p.numel() for p in self.core.parameters()) else ""

    def summarize(self, facts: dict, wall_time: float) -> dict:
        records = self.history
        summary = {
            "model": self.config.model + (f" (DEQ {self.config.deq})" if self.config.deq else ""),
            "parameters": facts["stored"],
            "trainable_parameters": self.trainable_parameters(),
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
            write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            plot_curves(self.run_dir, records)
            if lora.adapters(self.core):  # the adapter alone (factors and trained modules): a few KB
                lora.save_adapter(self.core, self.run_dir / "adapter.pt")
            self.log("\n" + final_table(summary))
        return summary

    @staticmethod
    def evaluated_checkpoint_path(config: TrainConfig) -> Path:
        return Path(config.checkpoint) if config.checkpoint else Path(config.run_dir) / "checkpoint.pt"

    def evaluate_checkpoint(self) -> dict:
        path = self.evaluated_checkpoint_path(self.config)
        self.load_model_state(self.evaluated_state, path)
        loss, accuracy = self.evaluate()
        self.log(f"{path}: test loss {loss:.4f}, test accuracy {accuracy:.4f} ({len(self.data.test)} images)")
        return {"test_loss": loss, "test_accuracy": accuracy, "test_images": len(self.data.test),
                "checkpoint": str(path)}


def run(config: TrainConfig) -> dict:
    trainer = Trainer(config)
    try:
        result = trainer.evaluate_checkpoint() if config.eval_only else trainer.fit()
        finish_together(trainer.cluster)
        return result
    finally:
        shutdown(trainer.cluster)
