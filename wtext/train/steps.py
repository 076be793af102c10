"""The training step and the evaluation of K runs at once, and the steps the epoch driver is given: a run alone
(EagerStep, K = 1), the members of a horizontally fused group (FusedStep); the graph-captured step
(wtext.train.graphed_step) replays train_step.

A step object has `trainers` (the K runs), train(batches) -> the running-sum increments [K, len(RUNNING_KEYS)] (see
wtext.train.running.step_sums), and evaluate() -> [(test loss, test accuracy)] per run.
"""

import torch
import torch.nn.functional as F
from torch import nn

from wtext.models.fused_resnet import FusedTiedResNet
from wtext.nn.learned_model import density_penalty

from .running import step_sums


def train_step(model: nn.Module, forward, trainers: list, images: torch.Tensor, labels: torch.Tensor,
               autocast) -> torch.Tensor:
    """One optimizer step of each of K runs whose parameters are disjoint, from one forward and one backward.

    forward(images) -> logits [K, N, classes]; labels [K, N]; model: the module forward runs (put in training
    mode). Returns step_sums's [K, len(RUNNING_KEYS)] increments. The learning-rate schedules are left to the
    caller: a captured step advances them outside the graph."""
    model.train()
    with autocast:
        logits = forward(images)
        losses = torch.stack([F.cross_entropy(logits[k].float(), labels[k], label_smoothing=t.config.label_smoothing)
                              for k, t in enumerate(trainers)])
        # A DEQ twin's Jacobian penalty, on the loss's device.
        penalties = [t.core.regularization().to(losses.device) for t in trainers
                     if getattr(t.core, "deq_outputs", None)]
        # Learned masks' density penalty (gumbel estimator).
        penalties += [penalty for t in trainers if t.config.mask_mode == "learned"
                      and (penalty := density_penalty(t.core)) is not None]
    for trainer in trainers:
        trainer.optimizer.zero_grad(set_to_none=True)
    # d(sum of losses)/d(run k's weights) = d(loss_k)/d(them): the gradient each run gets alone.
    objective = losses.sum()
    for penalty in penalties:
        objective = objective + penalty
    objective.backward()
    for trainer in trainers:
        if trainer.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainer.core.parameters(), trainer.config.grad_clip)
        trainer.optimizer.step()
    # After backward: the adjoint solves of implicit DEQ gradients have filled their statistics.
    solves = [list(getattr(t.core, "deq_outputs", None) or ()) for t in trainers]
    return step_sums(losses.detach(), logits.detach(), labels, solves)


@torch.no_grad()
def evaluate(model: nn.Module, forward, trainers: list, inputs, autocast) -> list[tuple[float, float]]:
    """(test loss, test accuracy) of each run on its whole test split: inputs(batches) turns the runs' test batches
    into forward's (images, labels [K, N]). Summed on the device and read back once, not once per batch."""
    model.eval()
    device = trainers[0].device
    sums = torch.zeros(len(trainers), 2, dtype=torch.float64, device=device)
    for batches in zip(*(t.test_loader.epoch(0) for t in trainers)):
        images, labels = inputs(batches)
        with autocast:
            logits = forward(images)
        sums[:, 0] += torch.stack([F.cross_entropy(logits[k].float(), labels[k], reduction="sum")
                                   for k in range(len(trainers))])
        sums[:, 1] += (logits.argmax(-1) == labels).sum(-1)
    return [(loss / len(t.data.test), correct / len(t.data.test))
            for t, (loss, correct) in zip(trainers, sums.tolist())]


class EagerStep:
    """The step of one run: its model as configured (compiled, DDP-wrapped) on its batch; evaluation runs the
    unwrapped model."""

    def __init__(self, trainer):
        self.trainer, self.trainers = trainer, [trainer]

    def inputs(self, batches):
        ((images, labels),) = batches
        return images, labels.unsqueeze(0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trainer.forward(images).unsqueeze(0)

    def train(self, batches) -> torch.Tensor:
        trainer = self.trainer
        trainer.set_mask_progress()
        sums = train_step(trainer.model, self.forward, self.trainers, *self.inputs(batches), trainer.autocast)
        trainer.scheduler.step()
        return sums

    def evaluate(self) -> list[tuple[float, float]]:
        trainer = self.trainer
        return evaluate(trainer.model, lambda images: trainer.core(images).unsqueeze(0), self.trainers, self.inputs,
                        trainer.autocast)


class FusedStep:
    """The step of a fused group: the members' weight-tied ResNets as one horizontally fused network
    (wtext.models.fused_resnet), each member with its own masks, optimizer, schedule and data order."""

    def __init__(self, trainers: list):
        self.trainers = trainers
        first = trainers[0]
        lengths = {(len(t.train_loader), len(t.data.test)) for t in trainers}
        if len(lengths) > 1:
            raise ValueError(f"members of a fused group need the same steps per epoch and test images; got {lengths}")
        self.device, self.autocast = first.device, first.autocast
        self.model = FusedTiedResNet([t.core for t in trainers])
        # channels_last activations, also on the CPU (where a solo run keeps NCHW): oneDNN's grouped convolutions
        # of few channels per group run faster on them (docs/fused.md). The results agree to float tolerance.
        self.memory_format = torch.channels_last if first.config.channels_last else torch.contiguous_format

    def inputs(self, batches):
        """Member k's images [N, 3, H, W] side by side along the channels, and the labels [K, N]."""
        images = torch.cat([b[0] for b in batches], dim=1).contiguous(memory_format=self.memory_format)
        return images, torch.stack([b[1] for b in batches])

    def train(self, batches) -> torch.Tensor:
        sums = train_step(self.model, self.model, self.trainers, *self.inputs(batches), self.autocast)
        for trainer in self.trainers:
            trainer.scheduler.step()
        return sums

    def evaluate(self) -> list[tuple[float, float]]:
        # The masked views are made once: the weights do not change during evaluation.
        with torch.no_grad(), self.autocast:
            views = self.model.masked_views(self.device)
        return evaluate(self.model, lambda images: self.model(images, views), self.trainers, self.inputs,
                        self.autocast)
