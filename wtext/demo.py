"""A short tour of the wtext ops (for training, see `python -m wtext.train`).

    python -m wtext.demo [--device cpu|cuda] [--steps 40]

1. Masks derived from a seed: kept fraction and overlap between the masks of different tied applications.
2. A tiny weight-tied multi-mask conv net (one shared 3x3 weight, a distinct mask per application) fitted to a
   fixed random batch for a few Adam steps: the loss falls, gradients flow through the fused masked ops.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from wtext import ops


def show_masks(device: torch.device) -> None:
    shape = (256, 256, 3, 3)
    print(f"1. Masks of a {shape} weight, seed 0, density 0.5, layers 0..3")
    print(f"   {'pattern':<10} {'kept':>8} {'overlap of layers 0 and 1':>28}")
    for pattern in ops.PATTERNS:
        masks = [ops.mask(shape, 0, layer, 0.5, pattern, device=device) for layer in range(4)]
        kept = torch.stack(masks).mean().item()
        overlap = (masks[0] * masks[1]).sum().item() / masks[0].sum().item()
        print(f"   {pattern:<10} {kept:>8.4f} {overlap:>28.4f}")
    print("   (independent masks of density 0.5 overlap in about half of their kept weights)")


def fit_tiny_tied_net(device: torch.device, steps: int) -> None:
    torch.manual_seed(0)
    channels, layers = 16, 4
    images = torch.randn(64, 3, 16, 16, device=device)
    labels = torch.randint(0, 10, (64,), device=device)
    stem = torch.nn.Conv2d(3, channels, 3, padding=1).to(device)
    shared = torch.nn.Parameter(torch.randn(channels, channels, 3, 3, device=device) * (2 / (9 * channels)) ** 0.5)
    head = torch.nn.Linear(channels, 10).to(device)
    optimizer = torch.optim.Adam([*stem.parameters(), shared, *head.parameters()], lr=1e-2)

    def forward(x):
        z = torch.relu(stem(x))
        for layer in range(layers):  # one weight, applied `layers` times, each time under its own mask
            z = torch.relu(z + ops.masked_conv2d(z, shared, None, seed=0, layer=layer, density=0.5, padding=1))
        return head(z.mean((2, 3)))

    print(f"\n2. Weight-tied net: 1 shared {channels}x{channels}x3x3 weight x {layers} masked applications "
          f"(multi-mask, density 0.5), {steps} Adam steps on a fixed batch")
    start = time.perf_counter()
    for step in range(steps + 1):
        loss = F.cross_entropy(forward(images), labels)
        if step % max(1, steps // 4) == 0:
            print(f"   step {step:>4}: loss {loss.item():.4f}")
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"   {time.perf_counter() - start:.1f} s; stored conv weights: {shared.numel()}, "
          f"effective per application: {int(ops.mask(shared.shape, 0, 0, 0.5, device=device).sum())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=40, help="Adam steps of the tiny net (default 40)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1; got {args.steps}")
    device = torch.device(args.device)
    print(f"wtext demo on {device} (torch {torch.__version__}, CUDA kernels built: {ops.HAS_CUDA_KERNELS})\n")
    show_masks(device)
    fit_tiny_tied_net(device, args.steps)
    print("\nNext: python benchmarks/bench_ops.py  (speed vs PyTorch), pytest python_tests  (the test suite)")


if __name__ == "__main__":
    main()
