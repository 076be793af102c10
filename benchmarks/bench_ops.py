"""Benchmarks of the wtext mask ops against PyTorch baselines measured in the same run.

    python benchmarks/bench_ops.py --device cpu     # tied_masked_weights fwd+bwd vs eager PyTorch (CPU target),
                                                    # and the host cost of a tiny masked conv fwd+bwd
    python benchmarks/bench_ops.py --device cuda    # the same on a GPU, plus workload A (N=128, 32x32):
                                                    # masked 3x3 conv fwd+bwd vs cuDNN dense vs eager conv2d(x, w*mask)

Targets (see the ops issue): CPU, L=6 layers of a 256x256x3x3 weight, wtext >= 2x faster than eager PyTorch
(masks built, multiplied, gradients summed); H100, workload A, C=256, bf16, density 0.5: wtext <= 1.05x cuDNN dense.

Workload A prints three times per case (see timing.Timing): latency (each call synchronized: includes the host's
time to reach the first kernel), steady state (calls back to back, as in training; the ratio is taken on it) and
the host's time to issue one call. A case whose steady time is close to its host time is launch-bound.
"""

import argparse

import torch
import torch.nn.functional as F

import wtext.ops as ops
from timing import measure_interleaved, median_ms, print_profile, print_table, print_timing_table


def eager_masks(shape, layers, seed, density, device):
    """How one writes seed-derived masks in plain PyTorch: a generator per layer, uniform draws, threshold."""
    masks = []
    for layer in range(layers):
        generator = torch.Generator(device=device).manual_seed(seed * 1000 + layer)
        masks.append((torch.rand(shape, generator=generator, device=device) < density).to(torch.float32))
    return torch.stack(masks)


def bench_tied_weights(device, args):
    shape = (args.channels, args.channels, 3, 3)
    weight = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn((args.layers, *shape), device=device)
    stored = eager_masks(shape, args.layers, 1, args.density, device)

    def eager_built():  # masks derived on every call, as wtext does
        out = weight * eager_masks(shape, args.layers, 1, args.density, device)
        out.backward(grad)

    def eager_stored():  # masks kept in memory (L x numel floats), the usual PyTorch approach
        out = weight * stored
        out.backward(grad)

    def wtext_tied():
        out = ops.tied_masked_weights(weight, args.layers, 1, args.density, args.pattern)
        out.backward(grad)

    rows = [
        ("eager: build masks, multiply, sum grads", median_ms(eager_built, device, args.warmup, args.repeats)),
        ("eager: stored masks, multiply, sum grads", median_ms(eager_stored, device, args.warmup, args.repeats)),
        (f"wtext tied_masked_weights ({args.pattern})", median_ms(wtext_tied, device, args.warmup, args.repeats)),
    ]
    print_table(f"tied_masked_weights fwd+bwd, L={args.layers}, weight {shape}, density {args.density}, {device}",
                rows, "eager: build masks, multiply, sum grads")


def bench_conv(device, args, dtype, channels):
    x = torch.randn(args.batch, channels, args.size, args.size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype, requires_grad=True)
    dense_weight = weight.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    mask = ops.mask(weight.shape, 1, 0, args.density, args.pattern, device=device, dtype=dtype)
    grad = torch.randn(args.batch, channels, args.size, args.size, device=device, dtype=dtype)
    grad = grad.contiguous(memory_format=torch.channels_last)

    def dense():
        F.conv2d(x, dense_weight, padding=1).backward(grad)

    def eager_masked(weight=weight):
        F.conv2d(x, weight * mask, padding=1).backward(grad)

    compiled_masked = torch.compile(lambda x, w: F.conv2d(x, w * mask, padding=1))

    def compiled():
        compiled_masked(x, weight).backward(grad)

    def wtext_conv():
        ops.masked_conv2d(x, weight, None, 1, 0, args.density, args.pattern, 1, 1).backward(grad)

    cases = {"cuDNN dense conv2d": dense, "eager conv2d(x, w*mask)": eager_masked}
    if not args.no_compile:
        cases["torch.compile conv2d(x, w*mask)"] = compiled
    cases[f"wtext masked_conv2d ({args.pattern})"] = wtext_conv
    rows = list(measure_interleaved(cases, device, args.warmup, args.repeats, args.rounds).items())
    name = str(dtype).replace("torch.", "")
    print_timing_table(f"workload A: 3x3 conv fwd+bwd, N={args.batch}, C={channels}, {args.size}x{args.size}, "
                       f"channels_last, {name}, density {args.density}", rows, "cuDNN dense conv2d")
    if args.profile:
        print_profile(f"wtext masked_conv2d fwd+bwd, C={channels}, {name}", wtext_conv, device)
        print_profile(f"cuDNN dense conv2d fwd+bwd, C={channels}, {name}", dense, device)


def bench_host_cost(device, args, dtype=torch.float32):
    """The host's cost of one masked conv fwd+bwd, on a conv so small that its kernels take no time. wtext's conv runs
    once per tied application, so where launches are slow (the lent GPU VMs) this cost decides whether the GPU waits
    for the host; on a CPU the same code paths run, so this is the figure to track between GPU sessions. On a GPU it
    is also taken in bf16: run 3 saw wtext's host time per workload-A call double in bf16 (0.68 vs 0.32 ms)."""
    x = torch.randn(1, 8, 4, 4, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(8, 8, 3, 3, device=device, dtype=dtype, requires_grad=True)
    dense_weight = weight.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(1, 8, 4, 4, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    calls = 200

    def dense():
        for _ in range(calls):
            F.conv2d(x, dense_weight, padding=1).backward(grad)

    def wtext_conv():
        for _ in range(calls):
            ops.masked_conv2d(x, weight, None, 1, 0, args.density, args.pattern, 1, 1).backward(grad)

    rows = [(f"{name} (per call)", median_ms(fn, device, 2, args.repeats) / calls)
            for name, fn in (("dense conv2d", dense), (f"wtext masked_conv2d ({args.pattern})", wtext_conv))]
    print_table(f"host cost of a tiny 3x3 conv fwd+bwd (1x8x4x4, channels_last, {str(dtype)[6:]}), {device}, "
                f"{torch.get_num_threads()} threads", rows, "dense conv2d (per call)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--channels", type=int, default=256, help="weight is [C, C, 3, 3] (default 256)")
    parser.add_argument("--layers", type=int, default=6, help="tied applications L (default 6)")
    parser.add_argument("--density", type=float, default=0.5, help="mask density (default 0.5)")
    parser.add_argument("--pattern", default="bernoulli", choices=ops.PATTERNS, help="mask pattern")
    parser.add_argument("--batch", type=int, default=128, help="workload A batch size (default 128)")
    parser.add_argument("--size", type=int, default=32, help="workload A image size (default 32)")
    parser.add_argument("--conv-channels", type=int, nargs="+", default=[128, 256], help="workload A widths")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default 5)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls; the median is reported (default 20)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="workload A: steady-state runs per case, taken in turns across the cases (default 7)")
    parser.add_argument("--profile", action="store_true", help="print the kernels of the wtext and dense conv by time")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and ops.HAS_CUDA_KERNELS):
        raise SystemExit("--device cuda needs a visible GPU and wtext built with CUDA kernels")
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
          f", threads {torch.get_num_threads()}")
    bench_tied_weights(device, args)
    bench_host_cost(device, args)
    if device.type == "cuda":
        bench_host_cost(device, args, torch.bfloat16)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        for dtype in (torch.float32, torch.bfloat16):
            for channels in args.conv_channels:
                bench_conv(device, args, dtype, channels)


if __name__ == "__main__":
    main()
