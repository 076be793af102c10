"""The training step of a weight-tied model captured once in a CUDA graph and replayed.

A step of a small model is a few hundred kernel launches, each costing host time; replaying a graph launches them
all at once. Captured: forward (under autocast), loss, backward, gradient clipping, Adam's update and the on-device
running sums. Outside the graph, per step: copying the batch into the graph's static input tensors and writing the
step's learning rate into the optimizer's device tensor (the schedule's value, computed on the host from the step
count: no device read). Nothing in a replayed step synchronizes with the host.

What it needs (graph_unsupported says which is missing): a CUDA device, a weight-tied model (a DEQ twin's solve
and adjoint run host-side loops), Adam built capturable with a tensor learning rate (Trainer does so when the graph
is on), no torch.compile (its own reduce-overhead mode is the way to graph a compiled model), one process (DDP's
gradient hooks are not captured here), and batches of one shape (the training loader drops the last partial batch).
"""

import torch
import torch.nn.functional as F
from torch import nn

WARMUP_STEPS = 3  # eager steps on a side stream before capture: cuDNN/cuBLAS choose their algorithms there


def graph_unsupported(trainer) -> str | None:
    """Why the trainer's step cannot be captured (None when it can)."""
    config = trainer.config
    if trainer.device.type != "cuda":
        return "the device is not CUDA"
    if config.deq is not None:
        return "a DEQ twin's solver runs host-side loops"
    if config.compile:
        return "the model is compiled (use torch.compile's own CUDA graphs instead)"
    if trainer.cluster.active:
        return "data-parallel training (DDP) is not captured"
    if config.optimizer != "adam":
        return "only Adam is captured (SGD reads its learning rate as a host number)"
    return None


def capturable_adam(parameters, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """Adam whose state and learning rate live on the device, so its step can be captured and its learning rate
    changed between replays. initial_lr is set as a host number: the scheduler then writes host numbers into the
    lr tensor (fill_, no device read) instead of scaling a device tensor it would read back every step."""
    optimizer = torch.optim.Adam(parameters, lr=torch.tensor(lr, device=device), weight_decay=weight_decay,
                                 capturable=True)
    for group in optimizer.param_groups:
        group["initial_lr"] = float(lr)
    return optimizer


class GraphedTrainStep:
    """step(images, labels): the trainer's training step as a replay of one CUDA graph, captured at the first call.

    The captured step does what Trainer.train_step does for a weight-tied model, into the same tensors: the model's
    parameters and gradients, the optimizer's state, trainer.running (the epoch's running sums; a new tensor put
    there by the trainer, e.g. at an epoch's end, is taken over before the next replay).
    """

    def __init__(self, trainer):
        reason = graph_unsupported(trainer)
        if reason is not None:
            raise ValueError(f"--cuda-graph: the training step cannot be captured in a CUDA graph: {reason}")
        self.trainer = trainer
        self.graph: torch.cuda.CUDAGraph | None = None
        self.images = self.labels = self.running = None

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        trainer = self.trainer
        if self.graph is None:
            self.capture(images, labels)
        if images.shape != self.images.shape or labels.shape != self.labels.shape:
            raise ValueError(f"a captured step takes batches of one shape: captured images {tuple(self.images.shape)}"
                             f", got {tuple(images.shape)}")
        if trainer.running is not self.running:  # the trainer started new sums (an epoch's end, a restore)
            self.running.copy_(trainer.running)
            trainer.running = self.running
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.graph.replay()
        trainer.scheduler.step()  # writes the next step's learning rate into the optimizer's lr tensor

    def body(self) -> None:
        """One training step on the static tensors: what the graph holds."""
        trainer = self.trainer
        config = trainer.config
        trainer.model.train()
        # The autocast cache would keep casts made during capture alive across replays; the graph holds them.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16, cache_enabled=False):
            logits = trainer.forward(self.images)
            loss = F.cross_entropy(logits.float(), self.labels, label_smoothing=config.label_smoothing)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainer.core.parameters(), config.grad_clip, foreach=True)
        trainer.optimizer.step()
        count = torch.full((), float(self.labels.numel()), device=self.labels.device)
        # The first three running sums (loss, correct, images); the rest are a DEQ twin's solver statistics.
        rest = torch.zeros(self.running.numel() - 3, device=self.labels.device)
        values = torch.cat([torch.stack([loss.detach().float() * self.labels.numel(),
                                         (logits.argmax(1) == self.labels).sum().float(), count]), rest])
        self.running += values.double()

    def capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Warm-up steps on a side stream, then the capture. The warm-up steps train: the parameters, optimizer
        state and running sums they change are put back, so the first replay is the step the run is at."""
        trainer = self.trainer
        optimizer = trainer.optimizer
        self.images, self.labels = images.clone(), labels.clone()
        self.running = trainer.running
        saved_parameters = [p.detach().clone() for p in trainer.core.parameters()]
        saved_running = self.running.clone()
        # A resumed run's optimizer has state to keep; a new run's gets its state from the warm-up, to be reset.
        saved_state = {parameter: {key: value.detach().clone() for key, value in state.items()
                                   if torch.is_tensor(value)}
                       for parameter, state in optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                optimizer.zero_grad(set_to_none=True)
                self.body()
        torch.cuda.current_stream().wait_stream(side)
        optimizer.zero_grad(set_to_none=True)  # gradients made inside the capture are the graph's own
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.body()
        with torch.no_grad():
            for parameter, value in zip(trainer.core.parameters(), saved_parameters):
                parameter.copy_(value)
            for parameter, state in optimizer.state.items():
                for key, value in state.items():
                    if not torch.is_tensor(value):
                        continue
                    if parameter in saved_state:
                        value.copy_(saved_state[parameter][key])
                    else:
                        value.zero_()  # Adam before its first step: zero moments, step 0
            self.running.copy_(saved_running)


def portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() as an eager optimizer would write it: learning rates as numbers and capturable off,
    so a checkpoint of a graphed run resumes with or without the graph (fit_loaded_optimizer puts them back)."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        if torch.is_tensor(group["lr"]):
            group["lr"] = group["lr"].item()  # one read per checkpoint, not per step
        if "capturable" in group:
            group["capturable"] = False
    return state


def fit_loaded_optimizer(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """After optimizer.load_state_dict: the loaded groups' flags and learning rates as this run's optimizer needs
    them (a capturable Adam keeps its learning rate and step counts as device tensors, an eager one as numbers and
    CPU tensors)."""
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
        device = group["params"][0].device
        lr = group["lr"].item() if torch.is_tensor(group["lr"]) else group["lr"]
        group["lr"] = torch.tensor(lr, device=device) if capturable else lr
        for parameter in group["params"]:
            step = optimizer.state.get(parameter, {}).get("step")
            if torch.is_tensor(step):
                target = parameter.device if capturable else torch.device("cpu")
                optimizer.state[parameter]["step"] = step.to(target, torch.float32)
