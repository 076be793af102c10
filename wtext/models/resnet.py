"""Weight-tied ResNet-like model: a stem, then per stage one MDEQ-style residual cell applied `depth` times with a
mask per application, downsampling between stages, and a head that keeps a coarse spatial grid."""

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from wtext.deq import DEQConfig
from wtext.nn import MaskSpec, TiedMaskedWeight, autocast_dtype
from wtext.validation import require_ints

from .tied_model import TiedModel


@dataclass(frozen=True)
class TiedResNetConfig:
    """width: channels of stage 0 (stage s has width * 2^s); expansion: the cell's inner width is expansion x width;
    depth: tied applications per stage; stages: resolutions (each after the first halves H and W);
    groups: GroupNorm groups (must divide every width and inner width); head_grid: the head averages the last
    stage's features over a head_grid x head_grid grid of cells and reads them with one linear layer (1: global
    average pooling); mask: how the tied weights are masked;
    deq: when set, the DEQ twin: each stage's cell is solved to its fixed point z* = cell(z*, u) with these solver
    and gradient options instead of being applied `depth` times (a fixed point needs a fixed map, so the cell has
    one mask, that of application 0)."""

    width: int = 64
    expansion: int = 2
    depth: int = 6
    stages: int = 1
    groups: int = 8
    head_grid: int = 4
    num_classes: int = 10
    in_channels: int = 3
    mask: MaskSpec = field(default_factory=MaskSpec)
    deq: DEQConfig | None = None

    def __post_init__(self):
        require_ints(self, ("width", "expansion", "depth", "stages", "groups", "head_grid", "num_classes",
                            "in_channels"))
        if self.width % self.groups:
            raise ValueError(f"width must be divisible by the GroupNorm groups; got width={self.width}, "
                             f"groups={self.groups}")

    def stage_width(self, stage: int) -> int:
        return self.width * 2**stage


class ResidualCell(nn.Module):
    """z' = GN(relu(z + GN(conv(relu(GN(conv(z, W1 ⊙ M1_l))), W2 ⊙ M2_l)) + u)) — MDEQ's residual block with input
    injection u, one shared (W1, W2) for every application l."""

    def __init__(self, width: int, expansion: int, groups: int, depth: int, spec: MaskSpec, seed_offset: int):
        super().__init__()
        inner = width * expansion
        self.conv1 = TiedMaskedWeight((inner, width, 3, 3), depth, spec, seed_offset)
        self.conv2 = TiedMaskedWeight((width, inner, 3, 3), depth, spec, seed_offset + 1)
        self.norm1 = nn.GroupNorm(groups, inner)
        self.norm2 = nn.GroupNorm(groups, width)
        self.norm3 = nn.GroupNorm(groups, width)

    def masked_weights(self, device: torch.device):
        """Both weights' masked views for all applications: one op call each per forward."""
        dtype = autocast_dtype(device)
        return self.conv1.split(dtype), self.conv2.split(dtype)

    def forward(self, z, u, weights, application: int):
        w1, w2 = weights
        h = F.relu(self.norm1(F.conv2d(z, self.conv1.view(w1, application), padding=1)))
        h = self.norm2(F.conv2d(h, self.conv2.view(w2, application), padding=1))
        return self.norm3(F.relu(z + h + u))


class TiedResNet(TiedModel):
    """forward(x [N, C, H, W]) -> logits [N, num_classes]. Any H, W >= 2^(stages-1); NCHW or channels_last."""

    def __init__(self, config: TiedResNetConfig):
        super().__init__(config)
        c = config
        inner_groups_ok = all((c.stage_width(s) * c.expansion) % c.groups == 0 for s in range(c.stages))
        if not inner_groups_ok:
            raise ValueError(f"width * expansion must be divisible by the GroupNorm groups; got width={c.width}, "
                             f"expansion={c.expansion}, groups={c.groups}")
        # GroupNorm, not BatchNorm: batch-independent, so train and eval, DEQ solves and data-parallel ranks all
        # see the same injection statistics.
        self.stem = nn.Sequential(nn.Conv2d(c.in_channels, c.width, 3, padding=1, bias=False), nn.GroupNorm(c.groups, c.width))
        self.downsample = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c.stage_width(s - 1), c.stage_width(s), 3, stride=2, padding=1, bias=False),
                          nn.GroupNorm(c.groups, c.stage_width(s)))
            for s in range(1, c.stages)
        )
        # Each tied weight gets its own seed offset, so no two weights share a mask stream.
        self.cells = nn.ModuleList(
            ResidualCell(c.stage_width(s), c.expansion, c.groups, self.applications, c.mask, seed_offset=16 * s)
            for s in range(c.stages)
        )
        # The head reads where features are, not only how much of each there is: global average pooling of a few
        # tied applications' features (small receptive fields) discards the layout that tells classes apart
        # (measured on real digits: 16% test accuracy after an epoch pooled globally, 92% with a 4x4 grid;
        # docs/model-quality.md).
        self.head = nn.Linear(c.stage_width(c.stages - 1) * c.head_grid**2, c.num_classes)

    def injections(self, stage: int, previous: torch.Tensor) -> torch.Tensor:
        """The input injection of a stage: the stem output, or the downsampled output of the previous stage."""
        return previous if stage == 0 else self.downsample[stage - 1](previous)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stem(x)
        self.deq_outputs = []
        for stage, cell in enumerate(self.cells):
            u = self.injections(stage, features)
            weights = cell.masked_weights(x.device)
            if self.config.deq is not None:
                # partial, not a lambda over the loop's variables: the implicit backward calls the map after the
                # loop has moved on to the next stage.
                features = self.solve(partial(cell, weights=weights, application=0), u, torch.zeros_like(u),
                                      prefix=f"stage{stage}.", inputs=[*weights[0], *weights[1], *cell.parameters()])
                continue
            z = torch.zeros_like(u)
            for application in range(self.config.depth):
                z = cell(z, u, weights, application)
                self.record(f"stage{stage}.application{application}", z)
            features = z
        return self.head(F.adaptive_avg_pool2d(features, self.config.head_grid).flatten(1))

    def flops_per_image(self, height: int = 32, width: int = 32) -> dict[str, float]:
        """Multiply-adds x 2 of the convolutions and the head for one image: dense, and counting only unmasked
        weights of the tied convolutions (effective)."""
        c = self.config
        dense = effective = 2 * 9 * c.in_channels * c.width * height * width
        for stage, cell in enumerate(self.cells):
            if stage > 0:
                height, width = (height + 1) // 2, (width + 1) // 2
                down = 2 * 9 * c.stage_width(stage - 1) * c.stage_width(stage) * height * width
                dense, effective = dense + down, effective + down
            for tied in (cell.conv1, cell.conv2):
                per_weight = 2 * height * width  # each weight element is one MAC per output pixel
                # A DEQ twin's cost depends on its solver steps: counted here per cell application.
                dense += self.applications * per_weight * tied.weight.numel()
                effective += self.applications * per_weight * tied.kept_per_application()
        head = 2 * self.head.weight.numel()
        return {"dense": dense + head, "effective": effective + head}
