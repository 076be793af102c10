"""Trainer: one training run built from its TrainConfig — data, model, optimizer, schedule, the step that trains it
alone — with its RunState and its checkpoints. wtext.train.loop.fit drives Trainers; a fused group's members are
Trainers driven together by one fused step."""

import dataclasses
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wtext import lora, models
from wtext.analysis.mask_statistics import learned_mask_statistics, mean_over_weights
from wtext.data import DeviceLoader, load_dataset
from wtext.nn import match_frozen_masks, set_mask_progress
from wtext.nn.learned_model import score_names
from wtext.safe_files import write_text_atomic

from .checkpoint import entry_errors, load_checkpoint, restore_rng_state, rng_state, save_atomic
from .config import TrainConfig
from .distributed import Cluster, all_reduce_sum, init_cluster
from .faults import crash_point
from .graphed_step import GraphedStep, capturable_adam, fit_loaded_optimizer, portable_optimizer_state
from .model_builder import adapt_for_training, load_initial_weights, model_for
from .report import final_table, plot_curves
from .run_dir import changed_options, check_run_dir, prepare_run_dir
from .run_state import NonFiniteLoss, RunState
from .running import as_dict, sum_of, zero_sums
from .schedule import warmup_cosine
from .steps import EagerStep
from .tensorboard_log import TensorBoardLog, summary_writer_class

CHECKPOINT = "checkpoint.pt"
MASK_SCORES_GROUP = "mask_scores"  # the name of the optimizer's parameter group of learned masks' scores


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


class Trainer:
    """One run. load_data: how its data set is loaded (load_dataset; a fused group passes a wtext.data.DatasetCache
    so its members share one copy); tag: prefixes its log lines ("[tag] ...", for members of a group); write: where
    log lines go (the main rank's only)."""

    def __init__(self, config: TrainConfig, load_data=load_dataset, tag: str | None = None, write=print):
        self.run_dir = check_run_dir(config)
        self.config, self.tag, self.write = config, tag, write
        kind = "cuda" if config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available()) \
            else "cpu"
        self.cluster = init_cluster(kind)
        self.device = select_device(config.device, self.cluster)
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if config.tensorboard and not config.eval_only:
            summary_writer_class()  # a missing package is named before any data is loaded
        self.tensorboard: TensorBoardLog | None = None  # opened by start()
        seed_everything(config.seed)
        # A resumed run reads its checkpoint before the data: a missing, damaged or mismatched one is an error at
        # once, not after minutes of loading a data set. start() loads it into the run.
        self.resumed = self.read_resumed_checkpoint() if config.resume else None
        self.build_data(load_data)
        self.build_model()
        self.build_optimizer()
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=config.bf16 and self.device.type == "cuda")
        # refuses, naming why, what it cannot capture
        self.step = GraphedStep(self) if config.cuda_graph else EagerStep(self)
        self.state = RunState(zero_sums(self.device))
        self.facts: dict | None = None  # wtext.models.describe of the model, made by start()

    # -- building -----------------------------------------------------------------------------------------------
    def build_data(self, load_data) -> None:
        config, world = self.config, self.cluster.world
        if config.batch_size % world:
            raise ValueError(f"batch_size must be divisible by the number of ranks; got batch_size="
                             f"{config.batch_size}, ranks={world}")
        if world > 1 and config.interleave != 1:
            raise ValueError("interleave emulates a multi-rank run in one process; do not combine it with torchrun")
        self.log(f"loading {config.dataset} ...")
        self.data = load_data(config.dataset, config.data_dir, device=self.device,
                              synthetic_train=config.synthetic_train, synthetic_test=config.synthetic_test,
                              seed=config.seed, shard=(self.cluster.rank, world))
        self.channels_last = config.channels_last and self.device.type == "cuda"
        crop, flip = config.augmentation(self.data.flip)
        self.train_loader = DeviceLoader(self.data.train, config.batch_size // world, self.data.mean, self.data.std,
                                         train=True, seed=config.seed, augment=crop or flip, crop=crop, flip=flip,
                                         channels_last=self.channels_last, rank=self.cluster.rank,
                                         interleave=config.interleave)
        if len(self.train_loader) == 0 and not config.eval_only:
            raise ValueError(f"batch_size={config.batch_size} is larger than the training set "
                             f"({len(self.data.train) * world} images): no full batch")
        self.test_loader = DeviceLoader(self.data.test, config.batch_size, self.data.mean, self.data.std,
                                        train=False, channels_last=self.channels_last)

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
        """The optimizer and its schedule. Learned masks' scores form a group of their own (MASK_SCORES_GROUP, the
        last one) with --mask-lr and --mask-weight-decay; wtext.masks freeze drops that group from a checkpoint."""
        config = self.config
        trainable = [(name, p) for name, p in self.core.named_parameters() if p.requires_grad]  # --lora, --train-only
        if not trainable:
            raise ValueError("nothing to train: every parameter of the model is frozen (check --train-only)")
        scores = score_names(self.core)
        parameters = [{"params": [p for name, p in trainable if name not in scores]}]
        mask_scores = [p for name, p in trainable if name in scores]
        if mask_scores:
            parameters.append({"params": mask_scores, "lr": config.learned_mask_lr(),
                               "weight_decay": config.mask_weight_decay, "name": MASK_SCORES_GROUP})
        if config.cuda_graph:
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
        if not self.cluster.main:
            return
        if self.tag is not None and message.strip():
            message = f"[{self.tag}] {message.lstrip()}"
        self.write(message)

    def agreed(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank (one all-reduce under torchrun): ranks must take the same
        branch at a checkpoint or a stop, or the next collective hangs."""
        if not self.cluster.active:
            return list(flags)
        return [total > 0 for total in all_reduce_sum([float(flag) for flag in flags], self.device, self.cluster)]

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])  # a device tensor under --cuda-graph

    def set_mask_progress(self) -> None:
        """Moves learned masks' temperature schedules to this step's place in training (gumbel estimator)."""
        if self.config.mask_mode == "learned":
            set_mask_progress(self.core, self.scheduler.last_epoch / max(1, len(self.train_loader) * self.config.epochs))

    def mask_metrics(self) -> dict[str, float]:
        """A learned-mask run's per-epoch mask statistics (wtext.analysis.mask_statistics), averaged over its tied weights:
        mask_hamming (mean pairwise Hamming distance between the applications' masks; nan with one application)
        and mask_equal_to_start (share of mask entries as the seed-derived start had them). Empty for other runs."""
        if self.config.mask_mode != "learned" or not hasattr(self.core, "tied_weights"):
            return {}
        rows = learned_mask_statistics(self.core)
        if not rows:
            return {}
        return {"mask_hamming": mean_over_weights(rows, "hamming"),
                "mask_equal_to_start": mean_over_weights(rows, "equal_to_start")}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One training step of this run alone, outside the epoch driver (dry-run estimates, benchmarks)."""
        self.state.running += self.step.train([(images, labels)])[0]

    def epoch_totals(self) -> dict[str, float]:
        """The epoch's running sums, summed over the data-parallel ranks (every rank sees the same)."""
        return as_dict(all_reduce_sum(self.state.running.tolist(), self.device, self.cluster))

    # -- finite state -------------------------------------------------------------------------------------------
    def check_finite(self) -> None:
        """Raises NonFiniteLoss if the epoch's loss sum or any parameter is NaN or infinite, on any rank."""
        finite = torch.stack([sum_of(self.state.running, "loss").isfinite()] +
                             [p.detach().isfinite().all() for p in self.core.parameters()]).all()
        (bad,) = self.agreed(not bool(finite))
        if bad:
            self.stop_non_finite()

    def stop_non_finite(self) -> None:
        state = self.state
        epoch, step = state.last_saved
        raise NonFiniteLoss(
            f"the training loss became non-finite in epoch {state.epoch + 1} (by step {state.step_in_epoch} of "
            f"{len(self.train_loader)}, learning rate {self.learning_rate():.3g}); training stopped. "
            f"{self.run_dir / CHECKPOINT} holds the last finite state (epoch {epoch + 1}, step {step}). "
            f"Lower --lr, set --grad-clip, or check the data")

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save(self) -> None:
        """Checkpoints the run, after checking that what it would save is finite."""
        self.check_finite()
        running = self.state.running.cpu()
        if self.cluster.active:  # the ranks' running sums, summed (rank 0 restores them, the others start at 0)
            running = torch.tensor(all_reduce_sum(running.tolist(), self.device, self.cluster), dtype=torch.float64)
        if self.cluster.main:
            payload = {"model": self.core.state_dict(), "optimizer": portable_optimizer_state(self.optimizer),
                       "scheduler": self.scheduler.state_dict(), **self.state.payload(), "rng": rng_state(),
                       "config": dataclasses.asdict(self.config), "running": running}
            save_atomic(payload, self.run_dir / CHECKPOINT)
        self.state.saved()
        crash_point("checkpoint")

    def checkpoint_due_by_steps(self) -> bool:
        every = self.config.checkpoint_every_steps
        return bool(every) and self.state.steps_done % every == 0

    def checkpoint_due_by_time(self) -> bool:
        every = self.config.checkpoint_every_seconds
        return bool(every) and self.state.seconds_since_save() >= every

    def load_model_state(self, saved: dict, path: Path) -> bool:
        """Loads the checkpoint's model weights; returns whether the model took the form of frozen masks for them
        (its parameters then changed: learned scores are gone)."""
        try:
            refrozen = match_frozen_masks(self.core, saved["model"])
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        try:
            self.core.load_state_dict(saved["model"])
        except RuntimeError as error:
            details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
            detail = details[0] if details else str(error)
            raise ValueError(f"{path}: its weights do not fit the model of this run ({self.config.model}): "
                             f"{detail[:300]}") from None
        return refrozen

    def read_resumed_checkpoint(self) -> dict:
        """run_dir/checkpoint.pt, the checkpoint --resume continues: read on the CPU (its RNG states must stay
        there; restore moves the rest to the run's device), every entry there, of its type and finite
        (load_checkpoint), and written with this run's options, up to those a resumption may change."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir} (the run did not start "
                                    f"training there); run without --resume to start it")
        saved = load_checkpoint(path, "cpu", resuming=True)
        changed = changed_options(saved["config"], self.config)
        if changed:
            name = changed[0]
            written = saved["config"].get(name, getattr(type(self.config)(), name))
            raise ValueError(f"{path} was written with {name}={written!r}, this run has "
                             f"{name}={getattr(self.config, name)!r}; resume with the same options (or another "
                             f"--run-dir)")
        return saved

    def restore(self, saved: dict, path: Path) -> None:
        """Continues from `saved` (read_resumed_checkpoint's, from `path`): model, optimizer, scheduler, where the
        run stands, RNG states. Errors name the file and the entry that does not fit."""
        steps_per_epoch = len(self.train_loader)
        if saved["step_in_epoch"] > steps_per_epoch:
            raise ValueError(f"{path}: damaged checkpoint: its 'step_in_epoch' entry is {saved['step_in_epoch']}, "
                             f"past the {steps_per_epoch} steps of an epoch of this run")
        if self.load_model_state(saved, path):
            self.build_optimizer()  # a frozen checkpoint: the optimizer no longer has the scores' group
        # The contents of these entries are checked by what reads them: torch's load_state_dict, numpy and random
        # raise their own (unnamed) errors, which only the entry's name makes a message.
        with entry_errors(path, "optimizer"):
            self.optimizer.load_state_dict(saved["optimizer"])
            fit_loaded_optimizer(self.optimizer, capturable=self.config.cuda_graph)
        with entry_errors(path, "scheduler"):
            self.scheduler.load_state_dict(saved["scheduler"])
        with entry_errors(path, "running"):
            self.state = RunState.from_checkpoint(saved, self.device, keep_sums=self.cluster.rank == 0)
        with entry_errors(path, "rng"):
            restore_rng_state(saved["rng"])

    # -- the start and the end of a run -------------------------------------------------------------------------
    def start(self) -> None:
        """What comes before the first step: the checkpoint restored (--resume), the run directory prepared, and
        (a new run) the starting state saved, so a run killed before its first periodic checkpoint can resume."""
        config = self.config
        if config.resume:
            self.restore(self.resumed, self.run_dir / CHECKPOINT)
            self.resumed = None  # its tensors live in the model and the optimizer now
            self.log(f"resuming {self.run_dir} at epoch {self.state.epoch + 1}, step {self.state.step_in_epoch}")
        if self.cluster.main:
            prepare_run_dir(self.run_dir, config, self.state.history)
        if not config.resume:
            self.save()
        if config.tensorboard and self.cluster.main:
            self.tensorboard = TensorBoardLog(self.run_dir, self.state.steps_done if config.resume else None)
        self.facts = models.describe(self.core)
        self.log(f"{config.model}{' (DEQ ' + config.deq + ')' if config.deq else ''}: {self.facts['stored']:,} "
                 f"parameters ({self.facts['effective_per_application']:,.0f} effective per application"
                 f"{self.trainable_note()}), mask {config.mask_mode}/{config.pattern}, {config.dataset}: "
                 f"{len(self.data.train) * self.cluster.world} train / {len(self.data.test)} test images "
                 f"(augmentation {self.augmentation_note()}), device "
                 f"{self.device}, {self.cluster.world} rank(s)")

    def augmentation_note(self) -> str:
        """What --augment does on this data set: 'crop,flip', 'crop', 'flip' or 'none' (auto resolved)."""
        parts = [name for name, on in zip(("crop", "flip"), self.config.augmentation(self.data.flip)) if on]
        return ",".join(parts) or "none"

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.core.parameters() if p.requires_grad)

    def trainable_note(self) -> str:
        """', N trainable' when --lora or --train-only froze some parameters."""
        trainable = self.trainable_parameters()
        return f", {trainable:,} trainable" if trainable < sum(p.numel() for p in self.core.parameters()) else ""

    def summarize(self, wall_time: float) -> dict:
        """summary.json, curves.png, a LoRA run's adapter.pt and the final table; returns the summary."""
        config, records, facts = self.config, self.state.history, self.facts
        summary = {
            "model": config.model + (f" (DEQ {config.deq})" if config.deq else ""),
            "parameters": facts["stored"],
            "trainable_parameters": self.trainable_parameters(),
            "effective_parameters": facts["effective_per_application"],
            "flops_per_image": facts["flops_effective"],
            "epochs": self.state.epoch,
            "best_test_accuracy": self.state.best[0],
            "best_epoch": self.state.best[1],
            "final_test_accuracy": records[-1]["test_accuracy"] if records else float("nan"),
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
        self.close_logs()
        return summary

    def close_logs(self) -> None:
        """Writes out and closes the TensorBoard event file (when --tensorboard); safe to call again."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

