"""TiedModel: what every weight-tied model of wtext shares, whatever its block: the number of applications of the
tied block, the DEQ twin's solve and its statistics, and the recording of every application's output for
layer-similarity analysis."""

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from wtext.deq import DEQ, DEQOutput
from wtext.nn import TiedMaskedWeight


class TiedModel(nn.Module):
    """Base of TiedResNet and TiedViT. `config` has `depth` (tied applications) and `deq` (None, or the DEQ twin's
    DEQConfig)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.deq_outputs: list[DEQOutput] = []  # the last forward's solves (DEQ twin), one per solved stage
        self._recorded: list[tuple[str, torch.Tensor]] | None = None  # set while recording()

    @property
    def applications(self) -> int:
        """Masked applications of the tied block per forward: `depth`, or 1 for a DEQ twin, whose fixed-point map
        needs one fixed mask."""
        return 1 if self.config.deq is not None else self.config.depth

    @contextmanager
    def recording(self):
        """Inside the block, forward keeps (name, output) of every tied application, or of every solver iterate of
        a DEQ twin, in the yielded list."""
        self._recorded = recorded = []
        try:
            yield recorded
        finally:
            self._recorded = None

    def record(self, name: str, output: torch.Tensor) -> None:
        if self._recorded is not None:
            self._recorded.append((name, output.detach()))

    def solve(self, cell: Callable, injection: torch.Tensor, z0: torch.Tensor, prefix: str = "",
              inputs=()) -> torch.Tensor:
        """The DEQ twin: the fixed point z* = cell(z*, injection), its statistics kept in self.deq_outputs; when
        recording, its iterates are recorded as PREFIXiterateK. inputs: the tensors the cell reads besides its
        state and the injection (its masked weights and the parameters of the modules it calls), which the
        reversible backward differentiates."""
        layer = DEQ(cell, self.config.deq).train(self.training)
        recording = self._recorded is not None
        out = layer(injection, z0, record_steps=range(self.config.deq.f_max_iter) if recording else None,
                    inputs=inputs)
        self.deq_outputs.append(out)
        if recording:
            for step, z in sorted(out.stats.recorded.items()):
                if step > 0:
                    self.record(f"{prefix}iterate{step}", z)
        return out.z

    def regularization(self) -> torch.Tensor:
        """The DEQ twin's weighted regularizers of the last forward (0 for the weight-tied model)."""
        return sum((out.regularization for out in self.deq_outputs), torch.zeros(()))

    def tied_weights(self) -> list[TiedMaskedWeight]:
        return [m for m in self.modules() if isinstance(m, TiedMaskedWeight)]
