"""LoRAAdapter: the one low-rank pair (A, B) of an adapted weight, its d masked copies, and how the update reaches
the three kinds of adapted module (nn.Linear, nn.Conv2d, wtext's TiedMaskedWeight)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from wtext import ops

from .config import LoRAConfig
from .seeds import mask_seeds

KINDS = ("linear", "conv2d", "tied")


def check_rank(rank: int, out_features: int, in_shape: tuple[int, ...], name: str) -> None:
    """A rank an adapter of the weight [out, *in_shape] of module `name` can use: at most min(out, in·kh·kw). Each
    copy's product (B ⊙ M_B,k)(A ⊙ M_A,k) has rank <= min(r, out, in·kh·kw), so a larger r adds parameters (A and B
    grow with r; r = 10^9 would ask the allocator for terabytes) but no rank, to any copy or to their sum."""
    reduction = int(torch.Size(in_shape).numel())
    bound = min(out_features, reduction)
    if rank > bound:
        raise ValueError(f"LoRA rank {rank} is more than module {name!r} can use: its weight is {out_features} x "
                         f"{reduction} ([out, in*kh*kw]), so the rank must be <= min(out, in*kh*kw) = {bound} "
                         f"(a higher rank adds parameters, not rank); lower r or narrow the targets")


class LoRAAdapter(nn.Module):
    """The factors of one adapted weight W [out, *in_shape] (in_shape: (in,) or (in, kh, kw)), attached to the
    adapted module as its child `lora` (a TiedMaskedWeight's also in its weight-update slot); its state_dict entries
    are `<module>.lora.A` and `<module>.lora.B`.

    A [rank, *in_shape] (kaiming-uniform), B [out, rank] (zeros: the adapted model starts as the base model).
    ΔW = scaling Σ_{k<d} (B ⊙ M_B,k)(A ⊙ M_A,k) with the masks of copy k regenerated from the module's two seeds.
    While `merged`, ΔW lives in the base weight and the adapter path does nothing; `original` then keeps the base
    weight as it was, so that unmerging restores it bit for bit.
    """

    def __init__(self, kind: str, out_features: int, in_shape: tuple[int, ...], config: LoRAConfig, name: str,
                 dtype: torch.dtype | None = None, device: torch.device | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got kind={kind!r}")
        check_rank(config.rank, out_features, tuple(in_shape), name)
        self.kind, self.name, self.config = kind, name, config
        self.out_features, self.in_shape = out_features, tuple(in_shape)
        self.A = nn.Parameter(torch.empty(config.rank, *in_shape, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(out_features, config.rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # nn.Linear's own init, as LoRA's reference code does
        self.seed_a, self.seed_b = mask_seeds(config.seed, name)
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False
        self.original: torch.Tensor | None = None

    def masked_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The d masked copies of each factor, concatenated along the rank: A_cat [d*r, *in_shape] (copy k in rows
        k*r..k*r+r-1) and B_cat [out, d*r] (copy k in those columns), so B_cat @ A_cat = Σ_k (B⊙M_B,k)(A⊙M_A,k) is
        one product of inner width d*r. One mask op call per factor; unscaled."""
        c = self.config
        d, r = c.copies, c.rank
        a = ops.tied_masked_weights(self.A, d, self.seed_a, c.density, c.pattern, c.mode, nm=c.nm)  # [d, r, *in]
        b = ops.tied_masked_weights(self.B, d, self.seed_b, c.density, c.pattern, c.mode, nm=c.nm)  # [d, out, r]
        # The copies are stacked along a leading dim: A's merge into rows is a view, B's into columns a small copy.
        return a.reshape(d * r, *self.in_shape), b.transpose(0, 1).reshape(self.out_features, d * r)

    def delta_weight(self) -> torch.Tensor:
        """ΔW [out, *in_shape], scaled."""
        a, b = self.masked_factors()
        return torch.mm(b, a.flatten(1)).mul_(self.scaling).view(self.out_features, *self.in_shape)

    # --- the update of a TiedMaskedWeight: W' = W + ΔW before the masks (TiedMaskedWeight.shared_weight) ---

    def adapt_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """W + ΔW of a tied weight W [out, *in_shape]; W itself while merged."""
        if self.merged:
            return weight
        a, b = self.masked_factors()
        if weight.is_contiguous():  # one kernel: W + scaling * B_cat @ A_cat
            return torch.addmm(weight.flatten(1), b, a.flatten(1), alpha=self.scaling).view(weight.shape)
        return weight + self.delta_weight()  # e.g. a channels_last conv weight: the sum keeps its layout

    # --- the adapter path of nn.Linear and nn.Conv2d, run as a forward hook of the adapted module ---

    def linear_hook(self, module: nn.Linear, args, kwargs, output: torch.Tensor):
        """output + scaling * B_cat (A_cat dropout(x)): x [..., in], output [..., out]."""
        if self.merged:
            return None
        x = args[0] if args else kwargs["input"]
        a, b = self.masked_factors()
        h = F.linear(self.dropout(x), a)  # [..., d*r]
        # The second product, the scaling and the sum with the base output in one GEMM.
        summed = torch.addmm(output.reshape(-1, self.out_features), h.reshape(-1, h.shape[-1]), b.t(),
                             alpha=self.scaling)
        return summed.view(output.shape)

    def conv_hook(self, module: nn.Conv2d, args, kwargs, output: torch.Tensor):
        """output + scaling * conv1x1(conv(dropout(x), A_cat), B_cat): A_cat is a conv in -> d*r with the base conv's
        kernel size, stride, padding and dilation; B_cat a 1x1 conv d*r -> out. x [N, in, H, W]."""
        if self.merged:
            return None
        x = args[0] if args else kwargs["input"]
        a, b = self.masked_factors()
        h = F.conv2d(self.dropout(x), a, None, module.stride, module.padding, module.dilation)  # [N, d*r, H', W']
        return self._add_pointwise(output, h, b)

    def _add_pointwise(self, output: torch.Tensor, h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """output + scaling * conv1x1(h, b) as one GEMM with the scaling and the sum fused in: a 1x1 convolution with
        few input channels is a slow path of the CPU convolutions (measured: 1x1 conv 16 -> 64 on 32 x [16, 32, 32],
        7 ms forward + 6 ms backward, against about 1 ms each as a batched matrix product; dev CPU, one thread)."""
        n, width, height, breadth = h.shape
        if h.is_contiguous() and output.is_contiguous():  # NCHW: out[n] += B_cat @ h[n] for every image n
            summed = torch.baddbmm(output.view(n, self.out_features, -1), b.expand(n, -1, -1), h.view(n, width, -1),
                                   alpha=self.scaling)
            return summed.view(output.shape)
        channels_last = torch.channels_last
        if h.is_contiguous(memory_format=channels_last) and output.is_contiguous(memory_format=channels_last):
            rows = output.permute(0, 2, 3, 1).reshape(-1, self.out_features)  # views: [N*H'*W', out]
            summed = torch.addmm(rows, h.permute(0, 2, 3, 1).reshape(-1, width), b.t(), alpha=self.scaling)
            return summed.view(n, height, breadth, self.out_features).permute(0, 3, 1, 2)
        return torch.add(output, F.conv2d(h, b[:, :, None, None]), alpha=self.scaling)  # mixed layouts

    # --- merging ---

    @torch.no_grad()
    def merge_into(self, weight: torch.Tensor) -> None:
        """weight += ΔW, keeping the weight as it was for unmerge_from. Nothing when already merged."""
        if self.merged:
            return
        delta = self.delta_weight()
        self.original = weight.detach().clone()
        weight.add_(delta.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge_from(self, weight: torch.Tensor) -> None:
        """The weight as it was before merge_into, bit for bit. Nothing when not merged."""
        if not self.merged:
            return
        weight.copy_(self.original)
        self.original, self.merged = None, False

    def extra_repr(self) -> str:
        c = self.config
        return (f"{self.kind}, out={self.out_features}, in={self.in_shape}, rank={c.rank}, copies={c.copies}, "
                f"density={c.density}, pattern={c.pattern}, mode={c.mode}, scaling={self.scaling:g}, "
                f"merged={self.merged}")
