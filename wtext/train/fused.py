"""train_fused: the runs of a sweep that share an architecture, trained as one horizontally fused model (HFTA).

Each member is a real Trainer, built exactly as `wtext.train.run` builds it (seeded with its own seed, its own
data order and augmentation, model, masks, optimizer and schedule); only its steps and evaluations run fused
(wtext.models.fused_resnet). Its run directory receives what a solo run writes: config.json, metrics.jsonl,
checkpoint.pt (the same payload, so --eval-only and --resume of wtext.train accept it), summary.json and curves.png.

Timing: a fused step trains every member at once, so its time is split evenly among the members: time_s,
images_per_second, eval_time_s and wall_time_s of a member are its share (the group's time / K), and a sweep's
summed times stay the wall time it took.
"""

import math
import signal
import threading
import time
from itertools import groupby

import torch
import torch.nn.functional as F
from torch import nn

from wtext import models
from wtext.models.fused_resnet import FusedTiedResNet

from .config import TrainConfig
from .fusion_groups import check_fusable, describe_member
from .loop import READ_EVERY_STEPS, Interrupted, Trainer, finished_summary
from .report import append_metrics


class MemberTrainer(Trainer):
    """A member of a fused group: a Trainer built as alone, whose evaluation the group hands in (evaluate returns
    the group's result for it once; without one it evaluates alone)."""

    def __init__(self, config: TrainConfig, log, datasets: dict):
        self.write_log, self.datasets, self.evaluation = log, datasets, None
        super().__init__(config)

    def log(self, message: str) -> None:
        self.write_log(f"[{self.run_dir}] {message.lstrip()}" if message.strip() else message)

    def load_data(self, name: str, data_dir, **options):
        """Members with the same data (the same seed, for the synthetic set) share one copy on the device instead
        of holding K."""
        if name != "synthetic":  # only the synthetic set depends on the seed and sizes
            options = {k: v for k, v in options.items() if k not in ("seed", "synthetic_train", "synthetic_test")}
        key = (name, str(data_dir), tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in self.datasets:
            self.datasets[key] = super().load_data(name, data_dir, **options)
        return self.datasets[key]

    def evaluate(self) -> tuple[float, float]:
        if self.evaluation is None:
            return super().evaluate()
        result, self.evaluation = self.evaluation, None
        return result


class FusedGroup:
    """Members at the same epoch and step, trained by fused steps until their last epoch."""

    def __init__(self, members: list[MemberTrainer], log):
        self.members, self.log = members, log
        first = members[0]
        self.device, self.autocast = first.device, first.autocast
        self.model = FusedTiedResNet([m.core for m in members])
        # channels_last activations, also on the CPU (where a solo run keeps NCHW): oneDNN's grouped convolutions
        # of few channels per group run faster on them (docs/fused.md). The results agree to float tolerance.
        self.memory_format = torch.channels_last if first.config.channels_last else torch.contiguous_format
        positions = {(m.epoch, m.step_in_epoch) for m in members}
        if len(positions) > 1:
            raise ValueError(f"members of a fused group must be at the same epoch and step; got {sorted(positions)}")
        lengths = {(len(m.train_loader), len(m.data.test)) for m in members}
        if len(lengths) > 1:
            raise ValueError(f"members of a fused group need the same steps per epoch and test images; got {lengths}")
        self.steps_per_epoch = len(first.train_loader)
        # [K, len(RUNNING_KEYS)]: the members' running sums, handed to them before a checkpoint or an epoch's end.
        self.running = torch.stack([m.running for m in members])
        self.stretch_start = time.perf_counter()
        self.interrupt_requested = False

    def __len__(self) -> int:
        return len(self.members)

    # -- one step ---------------------------------------------------------------------------------------------
    def train_step(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """batches: member k's (images [N, 3, H, W], labels [N]); one forward and backward for all members."""
        images = torch.cat([b[0] for b in batches], dim=1).contiguous(memory_format=self.memory_format)
        labels = torch.stack([b[1] for b in batches])  # [K, N]
        self.model.train()
        with self.autocast:
            logits = self.model(images)  # [K, N, classes]
            losses = torch.stack([F.cross_entropy(logits[k].float(), labels[k],
                                                  label_smoothing=m.config.label_smoothing)
                                  for k, m in enumerate(self.members)])
        for member in self.members:
            member.optimizer.zero_grad(set_to_none=True)
        # The members' parameters are disjoint: d(sum of losses)/d(member k's weights) = d(loss_k)/d(them), the
        # gradient it gets alone.
        losses.sum().backward()
        for member in self.members:
            if member.config.grad_clip > 0:
                nn.utils.clip_grad_norm_(member.core.parameters(), member.config.grad_clip)
            member.optimizer.step()
            member.scheduler.step()
        count = labels.shape[1]
        correct = (logits.argmax(2) == labels).sum(1).float()
        values = torch.stack([losses.detach().float() * count, correct, torch.full_like(correct, count)], dim=1)
        self.running[:, :3] += values.double()

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def sync(self) -> None:
        """Hands each member its running sums and its share of the time since the last sync."""
        now = time.perf_counter()
        share = (now - self.stretch_start) / len(self)
        self.stretch_start = now
        for k, member in enumerate(self.members):
            member.running = self.running[k].clone()
            member.seconds += share
            member.stretch_start = now

    def save(self) -> None:
        self.sync()
        for member in self.members:
            member.save()

    def read_running(self) -> bool:
        """One host read of the sums: raises NonFiniteLoss for a diverged member; says whether a checkpoint is due
        by time."""
        totals = self.running.tolist()
        diverged = [m for m, sums in zip(self.members, totals) if not math.isfinite(sums[0])]
        if diverged:
            self.sync()
            for member in self.members:  # the others' progress is kept: they resume from here
                if member not in diverged:
                    member.save()
            diverged[0].stop_non_finite()
        return any(m.checkpoint_due_by_time() for m in self.members)

    @torch.no_grad()
    def evaluate(self) -> list[tuple[float, float]]:
        """(test loss, test accuracy) of every member, from one fused forward per test batch; the masked views are
        made once (the weights do not change during evaluation)."""
        self.model.eval()
        sums = torch.zeros(len(self), 2, dtype=torch.float64, device=self.device)
        with self.autocast:
            views = self.model.masked_views(self.device)
        for batches in zip(*(m.test_loader.epoch(0) for m in self.members)):
            images = torch.cat([b[0] for b in batches], dim=1).contiguous(memory_format=self.memory_format)
            labels = torch.stack([b[1] for b in batches])
            with self.autocast:
                logits = self.model(images, views)
            losses = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
            sums[:, 0] += losses.view(len(self), -1).sum(1)
            sums[:, 1] += (logits.argmax(2) == labels).sum(1)
        count = len(self.members[0].data.test)
        return [(loss / count, correct / count) for loss, correct in sums.tolist()]

    # -- epochs -----------------------------------------------------------------------------------------------
    def train_epoch(self) -> None:
        self.stretch_start = time.perf_counter()
        epochs = [m.train_loader.epoch(m.epoch, start=m.step_in_epoch) for m in self.members]
        for batches in zip(*epochs):
            self.train_step(list(batches))
            for member in self.members:
                member.step_in_epoch += 1
                member.steps_done += 1
            step, first = self.members[0].step_in_epoch, self.members[0]
            due_by_time = False
            if step % READ_EVERY_STEPS == 0 or step == self.steps_per_epoch:
                due_by_time = self.read_running()
            stop = first.config.stop_after_steps and first.steps_done >= first.config.stop_after_steps
            if stop or self.interrupt_requested:
                raise Interrupted
            due_by_steps = any(m.checkpoint_due_by_steps() for m in self.members)
            if step < self.steps_per_epoch and (due_by_time or due_by_steps):
                self.save()
        self.sync()

    def finish_epoch(self) -> None:
        eval_start = time.perf_counter()
        results = self.evaluate()
        eval_share = (time.perf_counter() - eval_start) / len(self)
        for member, result in zip(self.members, results):
            member.evaluation = result
            record = member.finish_epoch()
            record["eval_time_s"] = eval_share  # the record is also the history entry the checkpoint holds
            member.save()
            append_metrics(member.run_dir, record)
            member.log(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc "
                       f"{record['train_accuracy']:.4f} | test loss {record['test_loss']:.4f} acc "
                       f"{record['test_accuracy']:.4f} | {record['images_per_second']:.0f} img/s (fused share)")
        self.running.zero_()
        self.stretch_start = time.perf_counter()

    def _on_sigint(self, signum, frame) -> None:
        if self.interrupt_requested:
            raise KeyboardInterrupt
        self.interrupt_requested = True
        self.log("\nCtrl-C: stopping after this fused step (press again to stop at once)")

    def fit(self) -> float:
        """Trains to the members' last epoch; returns the wall time. Ctrl-C or stop_after_steps checkpoints every
        member and raises Interrupted, as a solo run does."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if main else None
        wall_start = time.perf_counter()
        try:
            while self.members[0].epoch < self.members[0].config.epochs:
                try:
                    self.train_epoch()
                except Interrupted:
                    self.save()
                    first = self.members[0]
                    self.log(f"interrupted at epoch {first.epoch + 1}, step {first.step_in_epoch}: {len(self)} "
                             f"checkpoints saved; continue with the same options plus resume")
                    raise
                self.finish_epoch()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return time.perf_counter() - wall_start


def train_fused(configs: list[TrainConfig], log=print) -> list[dict]:
    """Trains the runs `configs` (one fused group: see wtext.train.fusion_groups.check_fusable) and returns their
    summaries, in order, as wtext.train.run would. A run finished before with the same options is skipped (its
    summary is returned); a run with resume=True continues from its checkpoint (members at different positions
    train as separate fused groups, one after another). A member whose loss diverges stops the group with
    NonFiniteLoss, as it stops its solo run; every checkpoint holds the last finite state."""
    configs = list(configs)
    check_fusable(configs)
    results: list[dict | None] = [None] * len(configs)
    datasets: dict = {}
    members: list[tuple[int, MemberTrainer]] = []
    for index, config in enumerate(configs):
        summary = finished_summary(config)
        if summary is not None:
            log(f"[{config.run_dir}] finished before with the same options: skipped")
            results[index] = summary
            continue
        members.append((index, MemberTrainer(config, log, datasets)))
    for _, member in members:
        member.start()
        member.log(f"fused member: {describe_member(member.config)}")
    active = []
    for index, member in members:
        if member.epoch >= member.config.epochs:  # its checkpoint already holds every epoch: summarized only
            results[index] = member.summarize(models.describe(member.core), 0.0)
        else:
            active.append((index, member))
    position = lambda item: (item[1].epoch, item[1].step_in_epoch)  # noqa: E731
    for (epoch, step), part in groupby(sorted(active, key=position), key=position):
        part = list(part)
        group = FusedGroup([member for _, member in part], log)
        first = part[0][1]
        log(f"fused group of {len(group)} {first.config.model} runs (width {first.config.width}, depth "
            f"{first.config.depth}) from epoch {epoch + 1}, step {step}, on {group.device}")
        wall = group.fit()
        for index, member in part:
            results[index] = member.summarize(models.describe(member.core), wall / len(group))
    return results
