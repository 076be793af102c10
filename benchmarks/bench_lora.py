"""Forward + backward of a multi-mask LoRA layer: the fused adapter of wtext.lora against d unfused masked copies.

    python benchmarks/bench_lora.py            # CPU, and CUDA when a GPU is visible
    python benchmarks/bench_lora.py --quick    # fewer rounds and repeats

Layers: nn.Linear 512 -> 512 on a batch of 256, and nn.Conv2d 64 -> 64 3x3 (padding 1) on 32 x 32 images, batch 32;
base weight frozen, input needing its gradient (a layer inside a network), rank r = 8, density 0.5, pattern exact.
Cases, per d in {2, 4}:
    frozen layer        the base layer alone
    plain LoRA r        d=1, density 1 (wtext.lora, the ordinary LoRA a multi-mask one is compared with)
    fused (wtext.lora)  one op call per factor for all d masked copies, one pair of products of inner width d*r
    d unfused copies    d masked pairs, masks from 2d wtext.ops.mask calls, 2d products (A path, B path per copy),
                        each with the fused adapter's primitives (B's product a GEMM with scaling and sum folded in)
Cases are timed in turns (benchmarks/timing.py: interleaved_median_ms); the ratios are to the frozen layer, and
fused / unfused.
"""

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

from timing import add_interleaving_options, interleaved_median_ms
from wtext import lora, ops

RANK = 8


def adapted(base: nn.Module, copies: int, density: float, pattern: str) -> nn.Module:
    """A copy of `base` with a wtext.lora adapter (non-zero factors, as after training)."""
    holder = nn.Sequential(copy.deepcopy(base))
    lora.inject(holder, lora.LoRAConfig(rank=RANK, copies=copies, density=density, pattern=pattern, targets=("0",)))
    with torch.no_grad():
        holder[0].lora.B.normal_(std=0.01)
    return holder[0]


class Unfused(nn.Module):
    """The same update computed copy by copy: base(x) + scaling Σ_k (B ⊙ M_B,k)((A ⊙ M_A,k) x), each mask from
    its own op call; the factors and mask seeds are those of a fused adapter's."""

    def __init__(self, base: nn.Module, fused: lora.LoRAAdapter):
        super().__init__()
        self.base, self.config, self.scaling = base, fused.config, fused.scaling
        self.seed_a, self.seed_b = fused.seed_a, fused.seed_b
        self.A = nn.Parameter(fused.A.detach().clone())
        self.B = nn.Parameter(fused.B.detach().clone())

    def forward(self, x):
        out, c, a, b = self.base(x), self.config, self.A, self.B
        for k in range(c.copies):
            mask_a = ops.mask(a.shape, self.seed_a, k, c.density, c.pattern, device=a.device, dtype=a.dtype)
            mask_b = ops.mask(b.shape, self.seed_b, k, c.density, c.pattern, device=b.device, dtype=b.dtype)
            # The same primitives as the fused adapter (B's product a GEMM with the scaling and the sum folded in),
            # so that the comparison measures the fusion alone.
            if isinstance(self.base, nn.Linear):
                out = torch.addmm(out, F.linear(x, a * mask_a), (b * mask_b).t(), alpha=self.scaling)
            else:
                h = F.conv2d(x, a * mask_a, None, self.base.stride, self.base.padding, self.base.dilation)
                n, width = h.shape[:2]
                out = torch.baddbmm(out.view(n, b.shape[0], -1), (b * mask_b).expand(n, -1, -1), h.view(n, width, -1),
                                    alpha=self.scaling).view(out.shape)
        return out


def step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def run():
        x.grad = None
        module(x).backward(grad)
    return run


def bench_layer(title: str, base: nn.Module, x: torch.Tensor, args) -> None:
    device = x.device
    base.requires_grad_(False)
    x.requires_grad_(True)
    grad = torch.randn_like(base(x))
    plain = adapted(base, 1, 1.0, args.pattern)
    cases = {"frozen layer": step(base, x, grad), f"plain LoRA r={RANK}": step(plain, x, grad)}
    for copies in args.copies:
        fused = adapted(base, copies, args.density, args.pattern)
        cases[f"fused (wtext.lora), d={copies}"] = step(fused, x, grad)
        cases[f"{copies} unfused copies"] = step(Unfused(base, fused.lora), x, grad)
    times = interleaved_median_ms(cases, device, args.warmup, args.repeats, args.rounds)
    frozen = times["frozen layer"]
    print(f"\n{title}, {device}, r={RANK}, density {args.density}, pattern {args.pattern}: fwd+bwd")
    print(f"{'case':<30} {'ms':>9} {'vs frozen':>10} {'fused vs unfused':>17}")
    for name, ms in times.items():
        versus = ""
        if name.startswith("fused"):
            copies = int(name.rsplit("=", 1)[1])
            versus = f"{ms / times[f'{copies} unfused copies']:.2f}x"
        print(f"{name:<30} {ms:>9.3f} {ms / frozen:>9.2f}x {versus:>17}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 repeats (a smoke run)")
    parser.add_argument("--copies", type=int, nargs="+", default=[2, 4], help="values of d (default 2 4)")
    parser.add_argument("--density", type=float, default=0.5, help="mask density (default 0.5)")
    parser.add_argument("--pattern", default="exact", choices=ops.PATTERNS, help="mask pattern (default exact)")
    add_interleaving_options(parser, warmup=3, repeats=10, rounds=7)
    parser.add_argument("--device", choices=["cpu", "cuda"], nargs="+",
                        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"], help="devices")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats, args.rounds = 1, 3, 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    for name in args.device:
        device = torch.device(name)
        torch.manual_seed(0)
        bench_layer("nn.Linear 512 -> 512, batch 256", nn.Linear(512, 512).to(device),
                    torch.randn(256, 512, device=device), args)
        bench_layer("nn.Conv2d 64 -> 64 3x3, 32x32, batch 32", nn.Conv2d(64, 64, 3, padding=1).to(device),
                    torch.randn(32, 64, 32, 32, device=device), args)


if __name__ == "__main__":
    main()
