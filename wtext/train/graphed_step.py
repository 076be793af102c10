"""The training step of a weight-tied model captured once in a CUDA graph and replayed.

A step of a small model is a few hundred kernel launches, each costing host time; replaying a graph launches them
all at once. Captured: wtext.train.steps.train_step (forward under autocast, loss, backward, gradient clipping,
Adam's update and the running-sum increments). Outside the graph, per step: copying the batch into the graph's
static input tensors and writing the step's learning rate into the optimizer's device tensor (the schedule's value,
computed on the host from the step count: no device read). Nothing in a replayed step synchronizes with the host.

What it needs (graph_unsupported says which is missing): a CUDA device, a weight-tied model (a DEQ twin's solve
and adjoint run host-side loops), Adam built capturable with a tensor learning rate (Trainer does so when the graph
is on), no torch.compile (its own reduce-overhead mode is the way to graph a compiled model), one process (DDP's
gradient hooks are not captured here), and batches of one shape (the training loader drops the last partial batch).
"""

import torch

from .steps import EagerStep, train_step

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
    if config.mask_mode == "learned":
        return "learned masks are not captured yet (their top-k thresholds have not been checked under capture)"
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


class GraphedStep(EagerStep):
    """The step of one run (EagerStep's) as a replay of one CUDA graph, captured at the first call. The graph holds
    train_step on static input tensors, writing into the same tensors every replay: the model's parameters and
    gradients, the optimizer's state, and the running-sum increments it returns."""

    def __init__(self, trainer):
        reason = graph_unsupported(trainer)
        if reason is not None:
            raise ValueError(f"--cuda-graph: the training step cannot be captured in a CUDA graph: {reason}")
        super().__init__(trainer)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.images = self.labels = self.sums = None
        # The autocast cache would keep casts made during capture alive across replays; the graph holds them.
        self.capture_autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=trainer.config.bf16,
                                               cache_enabled=False)

    def train(self, batches) -> torch.Tensor:
        images, labels = self.inputs(batches)
        if self.graph is None:
            self.capture(images, labels)
        if images.shape != self.images.shape or labels.shape != self.labels.shape:
            raise ValueError(f"a captured step takes batches of one shape: captured images {tuple(self.images.shape)}"
                             f", got {tuple(images.shape)}")
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.graph.replay()
        self.trainer.scheduler.step()  # writes the next step's learning rate into the optimizer's lr tensor
        return self.sums

    def body(self) -> torch.Tensor:
        """One training step on the static tensors: what the graph holds."""
        trainer = self.trainer
        return train_step(trainer.model, self.forward, self.trainers, self.images, self.labels, self.capture_autocast)

    def capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Warm-up steps on a side stream, then the capture. The warm-up steps train: the parameters and optimizer
        state they change are put back, so the first replay is the step the run is at."""
        trainer = self.trainer
        optimizer = trainer.optimizer
        self.images, self.labels = images.clone(), labels.clone()
        saved_parameters = [p.detach().clone() for p in trainer.core.parameters()]
        # A resumed run's optimizer has state to keep; a new run's gets its state from the warm-up, to be reset.
        saved_state = {parameter: {key: value.detach().clone() for key, value in state.items()
                                   if torch.is_tensor(value)}
                       for parameter, state in optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.body()
        torch.cuda.current_stream().wait_stream(side)
        # train_step sets the gradients to None first: those made inside the capture are the graph's own.
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.sums = self.body()
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
