"""FusedTiedResNet: K TiedResNets of one architecture run as one horizontally fused network (HFTA, MLSys 2021).

The members stay separate modules with their own parameters and masks; each forward concatenates their weights and
runs one grouped convolution (groups=K) per layer over their activations concatenated along channels. Every
operation keeps the members apart, so member k's logits and gradients are those it would get alone:

- a grouped convolution with groups=K is K convolutions, one per contiguous channel block;
- GroupNorm(K * G, K * C) with the members' affine parameters concatenated normalizes contiguous blocks of C / G
  channels, exactly the groups of each member's GroupNorm(G, C) (same eps);
- residual additions and ReLU are elementwise; average pooling is per channel;
- the heads are one batched matmul over [K, classes, F].

Masks: each member's tied weights give their masked views with one op call each (as alone); members with one view
(mask mode "same" or "dense") are expanded to the L views of "multi" members, and the views are concatenated along
the output channels once per weight: [L, K * out, in, 3, 3].
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wtext.nn import TiedMaskedWeight, autocast_dtype

from .resnet import TiedResNet

# Config fields that may differ between members: they change the masks, not the shapes.
MEMBER_FIELDS = ("mask",)


def fusion_problem(members: Sequence[nn.Module]) -> str | None:
    """Why these models cannot run fused, or None when they can."""
    if not members:
        return "no members to fuse"
    for index, model in enumerate(members):
        if not isinstance(model, TiedResNet):
            return f"member {index} is a {type(model).__name__}; only weight-tied TiedResNets can be fused"
        if model.config.deq is not None:
            return f"member {index} is a DEQ twin (its solver runs a data-dependent number of steps)"
        learned = [name for name, module in model.named_modules()
                   if isinstance(module, TiedMaskedWeight) and module.learned is not None]
        if learned:
            return (f"member {index} has learned masks ({learned[0]}); fused members use seed-derived masks, which "
                    f"the fused network regenerates")
        updated = [name for name, module in model.named_modules()
                   if isinstance(module, TiedMaskedWeight) and module.weight_update is not None]
        if updated:
            return (f"member {index} is adapted: its tied weight {updated[0]} holds a weight update (a LoRA adapter, "
                    f"for one); fused members are plain models")
        hooked = [name or "(the model)" for name, module in model.named_modules()
                  if not isinstance(module, TiedMaskedWeight) and any(map(len, _call_hooks(module)))]
        if hooked:
            return (f"member {index}'s module {hooked[0]} has hooks (a LoRA adapter of an nn.Conv2d or nn.Linear "
                    f"is a forward hook), which a fused forward would skip: it reads that module's weights directly")
    first = shape_of(members[0].config)
    for index, model in enumerate(members[1:], start=1):
        other = shape_of(model.config)
        if other != first:
            differing = sorted(k for k in first if first[k] != other[k])
            return (f"member {index} has another architecture than member 0 ("
                    + ", ".join(f"{k}={other[k]!r} vs {first[k]!r}" for k in differing) + ")")
    return None


def _call_hooks(module: nn.Module) -> tuple[dict, ...]:
    """The hooks that calling the module runs. A fused forward calls only the members' tied weights and reads every
    other module's parameters directly, so these hooks would not run."""
    return (module._forward_pre_hooks, module._forward_hooks, module._backward_pre_hooks, module._backward_hooks)


def shape_of(config) -> dict:
    """The architecture of a TiedResNetConfig: every field but the masks."""
    return {name: getattr(config, name) for name in config.__dataclass_fields__ if name not in MEMBER_FIELDS}


class JoinedNorm:
    """The members' GroupNorms as one over x [N, K * C, H, W] (member k's channels in block k): their affine
    parameters joined once, so a norm applied at every tied application joins them once per forward."""

    def __init__(self, norms: Sequence[nn.GroupNorm]):
        self.groups, self.eps = norms[0].num_groups * len(norms), norms[0].eps
        self.weight, self.bias = torch.cat([n.weight for n in norms]), torch.cat([n.bias for n in norms])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


def group_norm(x: torch.Tensor, norms: Sequence[nn.GroupNorm]) -> torch.Tensor:
    """The members' GroupNorms over x [N, K * C, H, W], applied once."""
    return JoinedNorm(norms)(x)


def conv(x: torch.Tensor, weights: Sequence[torch.Tensor] | torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Member k's 3x3 convolution (padding 1) of its channel block of x [N, K * C_in, H, W]; weights: the K
    weights [out, C_in, 3, 3], or them already concatenated [K * out, C_in, 3, 3]."""
    weight = weights if isinstance(weights, torch.Tensor) else torch.cat(list(weights))
    groups = x.shape[1] // weight.shape[1]
    return F.conv2d(x, weight, stride=stride, padding=1, groups=groups)


class FusedTiedResNet(nn.Module):
    """forward(x [N, K * in_channels, H, W], member k's images in channel block k) -> logits [K, N, num_classes].

    The members are registered as children (members.k.*), so .train()/.eval() and .to() reach them; their own
    state dicts are unchanged and are what a checkpoint of member k holds.
    """

    def __init__(self, members: Sequence[TiedResNet]):
        super().__init__()
        problem = fusion_problem(members)
        if problem is not None:
            raise ValueError(f"cannot fuse these models: {problem}")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def __len__(self) -> int:
        return len(self.members)

    def masked_views(self, device: torch.device) -> list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]:
        """Per stage, (conv1, conv2) views: tuples of V tensors [K * out, in, 3, 3], V the largest member view count
        (1 when every member is "same" or "dense"). One op call per member per weight, one cat per weight."""
        dtype = autocast_dtype(device)
        views = []
        for stage in range(self.config.stages):
            tied = [[cell.conv1, cell.conv2] for cell in (m.cells[stage] for m in self.members)]
            pair = []
            for which in range(2):
                stacked = [member[which](dtype) for member in tied]  # each [V_k, out, in, 3, 3]
                count = max(s.shape[0] for s in stacked)
                # expand, not repeat: a one-view member's gradient sums over the applications, as it does alone.
                stacked = [s if s.shape[0] == count else s.expand(count, *s.shape[1:]) for s in stacked]
                pair.append(torch.cat(stacked, dim=1).unbind(0))
            views.append(tuple(pair))
        return views

    def forward(self, x: torch.Tensor, views=None) -> torch.Tensor:
        """views: masked_views(x.device), to reuse them across batches where the weights do not change
        (evaluation); computed here when None."""
        c, members = self.config, self.members
        if views is None:
            views = self.masked_views(x.device)
        features = group_norm(conv(x, [m.stem[0].weight for m in members]), [m.stem[1] for m in members])
        for stage in range(c.stages):
            if stage == 0:
                u = features
            else:
                down = [m.downsample[stage - 1] for m in members]
                u = group_norm(conv(features, [d[0].weight for d in down], stride=2), [d[1] for d in down])
            cells = [m.cells[stage] for m in members]
            norms = [JoinedNorm([getattr(cell, name) for cell in cells]) for name in ("norm1", "norm2", "norm3")]
            w1, w2 = views[stage]
            z = torch.zeros_like(u)
            for application in range(c.depth):
                w1_l, w2_l = w1[application if len(w1) > 1 else 0], w2[application if len(w2) > 1 else 0]
                h = F.relu(norms[0](conv(z, w1_l)))
                h = norms[1](conv(h, w2_l))
                z = norms[2](F.relu(z + h + u))
            features = z
        pooled = F.adaptive_avg_pool2d(features, c.head_grid)  # [N, K * C, g, g]
        # Member k's flattened features are its channel block in (C, g, g) order, as flatten(1) gives alone.
        flat = pooled.reshape(pooled.shape[0], len(members), -1)  # [N, K, F]
        weight = torch.stack([m.head.weight for m in members])  # [K, classes, F]
        bias = torch.stack([m.head.bias for m in members])  # [K, classes]
        return torch.einsum("nkf,kcf->knc", flat, weight) + bias[:, None, :]
