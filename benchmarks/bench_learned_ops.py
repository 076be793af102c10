"""Benchmarks of the learned-mask ops against the same computation in plain PyTorch, measured in turns in one run.

    python benchmarks/bench_learned_ops.py                   # CPU, then CUDA when a GPU and CUDA kernels are there
    python benchmarks/bench_learned_ops.py --device cpu --preset resnet-small

The weights are the tied conv weights of a ResNet preset (resnet-tiny by default): per stage s a cell's
[inner, width, 3, 3] and [width, inner, 3, 3] weights (width = width_0 * 2^s, inner = expansion * width), each with
L = depth applications. One "step" does for every weight what a training step with learned masks does:
    learned: thresholds from the scores (density --density), the L masked views, their backward to weight and scores
    packed:  the L masked views of a frozen checkpoint's packed masks, their backward to the weight
against plain PyTorch: wtext/nn/learned_reference.py (order keys, kthvalue, mask, multiply, autograd) and
`weight * unpack_masks(bits)` (wtext/nn/packed_masks.py). The cases run in turns (timing.interleaved_median_ms), so
a drift of clocks or load reaches all of them alike; the tables give the median per step and the ratio to plain
PyTorch.
"""

import argparse

import torch

import wtext.ops as ops
from timing import add_interleaving_options, interleaved_median_ms, print_table
from wtext.models.presets import preset_config
from wtext.nn import learned_reference as reference
from wtext.nn.packed_masks import pack_masks, unpack_masks


def tied_conv_shapes(preset: str) -> tuple[list[tuple[int, ...]], int]:
    """The tied conv weights' shapes of a ResNet preset and its number of applications per weight."""
    config = preset_config(preset)
    shapes = []
    for stage in range(config.stages):
        width = config.stage_width(stage)
        inner = width * config.expansion
        shapes += [(inner, width, 3, 3), (width, inner, 3, 3)]
    return shapes, config.depth


def make_weights(shapes, applications, density, device):
    weights = []
    for shape in shapes:
        weight = torch.randn(shape, device=device, requires_grad=True)
        scores = torch.randn((applications, *shape), device=device, requires_grad=True)
        kept = reference.kept_count(density, weight.numel())
        frozen = reference.learned_masks(scores, reference.thresholds(scores, kept))
        weights.append(dict(weight=weight, scores=scores, kept=kept, bits=pack_masks(frozen),
                            grad=torch.randn((applications, *shape), device=device)))
    return weights


def learned_cases(weights) -> dict:
    def plain():
        for w in weights:
            thresholds = reference.thresholds(w["scores"], w["kept"])
            views = reference.learned_masked_weights(w["weight"], w["scores"], thresholds)
            torch.autograd.grad(views, (w["weight"], w["scores"]), w["grad"])

    def fused():
        for w in weights:
            thresholds = ops.learned_mask_thresholds(w["scores"].detach(), w["kept"])
            views = ops.learned_masked_weights(w["weight"], w["scores"], thresholds)
            torch.autograd.grad(views, (w["weight"], w["scores"]), w["grad"])

    return {"plain PyTorch (learned_reference)": plain, "wtext learned ops": fused}


def learned_parts_cases(weights) -> dict:
    """Where the time goes: the thresholds alone, and the views' forward alone."""
    thresholds = [reference.thresholds(w["scores"], w["kept"]) for w in weights]

    def plain_thresholds():
        for w in weights:
            reference.thresholds(w["scores"], w["kept"])

    def fused_thresholds():
        for w in weights:
            ops.learned_mask_thresholds(w["scores"].detach(), w["kept"])

    def plain_views():
        with torch.no_grad():
            for w, t in zip(weights, thresholds):
                reference.learned_masked_weights(w["weight"], w["scores"], t)

    def fused_views():
        with torch.no_grad():
            for w, t in zip(weights, thresholds):
                ops.learned_masked_weights(w["weight"], w["scores"], t)

    return {"plain thresholds (keys + kthvalue)": plain_thresholds, "wtext learned_mask_thresholds": fused_thresholds,
            "plain views forward (no grad)": plain_views, "wtext learned_masked_weights forward": fused_views}


def packed_cases(weights) -> dict:
    def plain():
        for w in weights:
            views = w["weight"] * unpack_masks(w["bits"], w["weight"].shape)
            torch.autograd.grad(views, w["weight"], w["grad"])

    def fused():
        for w in weights:
            views = ops.packed_masked_weights(w["weight"], w["bits"])
            torch.autograd.grad(views, w["weight"], w["grad"])

    return {"weight * unpack_masks(bits)": plain, "wtext packed_masked_weights": fused}


def bench(device: torch.device, args) -> None:
    shapes, applications = tied_conv_shapes(args.preset)
    weights = make_weights(shapes, applications, args.density, device)
    what = (f"{args.preset}: {len(shapes)} tied weights {shapes}, L={applications}, density {args.density}, "
            f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""))
    timing = dict(warmup=args.warmup, repeats=args.repeats, rounds=args.rounds)
    for title, cases in ((f"learned masks fwd+bwd per step (thresholds, views, grads of weight and scores), {what}",
                          learned_cases(weights)),
                         (f"packed masks fwd+bwd per step (views, grad of weight), {what}", packed_cases(weights))):
        rows = list(interleaved_median_ms(cases, device, **timing).items())
        print_table(title, rows, rows[0][0])
    rows = list(interleaved_median_ms(learned_parts_cases(weights), device, **timing).items())
    print_table(f"learned masks, parts, {what}", rows, rows[0][0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), help="one device (default: CPU, then CUDA if present)")
    parser.add_argument("--preset", default="resnet-tiny", help="a ResNet preset (default resnet-tiny)")
    parser.add_argument("--density", type=float, default=0.5, help="fraction of each weight kept (default 0.5)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads; default: torch's)")
    add_interleaving_options(parser, warmup=5, repeats=20, rounds=7)
    args = parser.parse_args()

    cuda_ready = torch.cuda.is_available() and ops.HAS_CUDA_KERNELS
    if args.device == "cuda" and not cuda_ready:
        raise SystemExit("--device cuda needs a visible GPU and wtext built with CUDA kernels")
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if cuda_ready else [])
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}")
    for device in devices:
        if device == "cuda":
            print(f"GPU: {torch.cuda.get_device_name()}")
        bench(torch.device(device), args)


if __name__ == "__main__":
    main()
