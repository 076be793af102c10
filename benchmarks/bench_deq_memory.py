"""Memory and time of one training step of the DEQ twin by gradient method, at 4, 8, 16 and 32 solver steps, and of
the weight-tied model of the same depth: back-propagation through the unrolled coupled iteration, implicit
(Anderson forward and adjoint solves of that many steps), phantom (that many forward steps, 5 damped gradient
steps), reversible (that many coupled steps undone in backward), and the weight-tied model applying its cell that
many times. Every solve runs its whole budget (tolerances unreachable), so the step counts are what they say.

Peak memory of the step (forward, loss, backward), above what was allocated before it:
- CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, in the benchmark's process.
- CPU: the process's peak resident set (ru_maxrss) above its resident set before the step, each case in a fresh
  child process that first runs a one-image step (loading the libraries the step touches, so their pages are
  not counted as the step's), with glibc's mmap threshold fixed so freed blocks leave the resident set. It counts
  what the allocator holds, an upper bound of the live tensors.
Time: the median of --repeats steps after the peak was taken, in the same process.

    python benchmarks/bench_deq_memory.py --device cpu                  # resnet-tiny, batch 32, 32x32
    python benchmarks/bench_deq_memory.py --device cuda --model resnet-small --batch 128

The reversible row's memory should be flat in the step count (within 10% from 4 to 32) where unrolled grows
linearly. At 32 steps the reversible reconstruction exceeds its error bound (docs/deq.md); its cost is still what
the row measures, the warning is silenced here.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

METHODS = ("unrolled", "implicit", "phantom", "reversible", "weight-tied")
STEPS = (4, 8, 16, 32)
UNREACHABLE = 1e-30  # tolerance no solve meets: every solve runs its whole budget


def build(method: str, steps: int, args):
    from wtext import models
    from wtext.deq import DEQConfig

    if method == "weight-tied":
        return models.build_model(args.model, depth=steps)
    options = {
        "unrolled": dict(backward="unrolled", f_max_iter=steps),
        "reversible": dict(backward="reversible", f_max_iter=steps),
        "implicit": dict(backward="implicit", f_max_iter=steps, b_max_iter=steps, b_tol=UNREACHABLE),
        "phantom": dict(backward="phantom", f_max_iter=steps),
    }[method]
    return models.build_model(args.model, deq=DEQConfig(f_tol=UNREACHABLE, **options))


def resident_bytes() -> int:
    """The process's resident set now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def measure_case(method: str, steps: int, args) -> dict:
    """{"peak_mb", "ms"} of one training step of this case (run in the process that measures it)."""
    from wtext.deq import ReconstructionWarning

    warnings.simplefilter("ignore", ReconstructionWarning)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(method, steps, args).to(device).train()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(10, (args.batch,), device=device)

    def step(batch=args.batch):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images[:batch]), labels[:batch]).backward()
        model.deq_outputs = []

    step(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = resident_bytes()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return {"peak_mb": peak / 2**20, "ms": statistics.median(times)}


def in_child(method: str, steps: int, args) -> dict:
    """measure_case in a fresh Python process (a process's peak resident set cannot be reset)."""
    command = [sys.executable, __file__, "--case", method, str(steps), "--device", args.device, "--model",
               args.model, "--batch", str(args.batch), "--size", str(args.size), "--repeats", str(args.repeats)]
    # A fixed mmap threshold makes glibc hand every large block back when it is freed, so the resident set follows
    # the live tensors instead of keeping freed heap pages (which grow with the number of alloc/free cycles).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"case {method} at {steps} steps failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet-tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--case", nargs=2, metavar=("METHOD", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure_case(args.case[0], int(args.case[1]), args)))
        return
    measure = in_child if args.device == "cpu" else measure_case
    where = ("peak resident set above the start, fresh process per case" if args.device == "cpu"
             else "max_memory_allocated above the start")
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, {args.device} ({where}); one training step")
    results = {}
    for steps in args.steps:
        for method in args.methods:
            results[method, steps] = measure(method, steps, args)
            print(f"  {method} at {steps} steps: {results[method, steps]['peak_mb']:.1f} MiB, "
                  f"{results[method, steps]['ms']:.1f} ms", flush=True)
    header = " ".join(f"{steps:>9} st" for steps in args.steps)
    for what, key, unit in (("peak memory", "peak_mb", "MiB"), ("time per step", "ms", "ms")):
        print(f"\n{what} ({unit}); in brackets: / weight-tied at the same depth")
        print(f"{'method':>12} {header}   {args.steps[-1]} / {args.steps[0]} steps")
        for method in args.methods:
            cells = []
            for steps in args.steps:
                value = results[(method, steps)][key]
                reference = results.get(("weight-tied", steps), {}).get(key)
                ratio = f"({value / reference:.2f})" if reference else ""
                cells.append(f"{value:>7.1f}{ratio:>7}")
            growth = results[(method, args.steps[-1])][key] / results[(method, args.steps[0])][key]
            print(f"{method:>12} {' '.join(cells)}   {growth:.2f}x")


if __name__ == "__main__":
    main()
