"""DEQ benchmark, workload B (defined in benchmarks/NOTES.md): one training step (forward solve + implicit
backward) of a DEQ whose cell is the shipped DEQ twin's residual cell (wtext.models.ResidualCell), with wtext's
solver against a plain PyTorch Anderson that checks convergence with .item() every iteration (the DEQ tutorial /
torchdeq style). Same cell, same iteration counts (tolerances set so both run the full budget), ratio printed, host
reads inside the forward loop counted.

    python benchmarks/bench_deq.py --device cuda                       # workload B: batch 128, C=128, 32x32
    python benchmarks/bench_deq.py --device cpu --batch 8 --channels 16 --size 16

Target (ops issue 3): on an H100, wtext <= 0.5x the reference time, with 0 host syncs inside the loop.
"""

import argparse
import contextlib
import warnings

import torch
from torch import nn

from timing import measure, median_ms, print_profile, print_table
from wtext import deq, models
from wtext.nn import MaskSpec
from wtext.deq.backward import ImplicitGradient


class ShippedCell(nn.Module):
    """The DEQ twin's cell exactly as the shipped models run it: wtext.models.ResidualCell with one mask (a DEQ's map
    must be fixed), its masked weights made by one tied_masked_weights call per weight and training step and used
    by F.conv2d. Expansion 1 (C -> C -> C) is workload B's cell: relu(GN(z + GN(conv(relu(GN(conv(z, W1 ⊙ M1))),
    W2 ⊙ M2)) + x)), then GN. Call refresh() once per step, as the models' forward does."""

    def __init__(self, channels: int, density: float = 0.5):
        super().__init__()
        groups = 8 if channels % 8 == 0 else 1
        self.cell = models.ResidualCell(channels, 1, groups, 1, MaskSpec(mode="multi", density=density), 0)
        self.weights = None

    def refresh(self, device: torch.device) -> None:
        self.weights = self.cell.masked_weights(device)

    def forward(self, z, x):
        return self.cell(z, x, self.weights, 0)


def reference_anderson(f, x0, m=5, lam=1e-4, max_iter=18, tol=1e-3, beta=1.0, host_reads=None):
    """The widely copied PyTorch Anderson: full Gram recomputation, batched solve, and an .item() check per step."""
    batch, dim = x0.shape[0], x0[0].numel()
    xs = x0.new_zeros(batch, m, dim)
    fs = x0.new_zeros(batch, m, dim)
    xs[:, 0], fs[:, 0] = x0.reshape(batch, -1), f(x0).reshape(batch, -1)
    xs[:, 1], fs[:, 1] = fs[:, 0], f(fs[:, 0].view_as(x0)).reshape(batch, -1)
    h = x0.new_zeros(batch, m + 1, m + 1)
    h[:, 0, 1:] = h[:, 1:, 0] = 1
    y = x0.new_zeros(batch, m + 1, 1)
    y[:, 0] = 1
    k = 1
    for k in range(2, max_iter):
        n = min(k, m)
        g = fs[:, :n] - xs[:, :n]
        h[:, 1:n + 1, 1:n + 1] = torch.bmm(g, g.transpose(1, 2)) + lam * torch.eye(n, dtype=x0.dtype, device=x0.device)
        alpha = torch.linalg.solve(h[:, :n + 1, :n + 1], y[:, :n + 1])[:, 1:n + 1, 0]
        xs[:, k % m] = beta * (alpha[:, None] @ fs[:, :n])[:, 0] + (1 - beta) * (alpha[:, None] @ xs[:, :n])[:, 0]
        fs[:, k % m] = f(xs[:, k % m].view_as(x0)).reshape(batch, -1)
        residual = (fs[:, k % m] - xs[:, k % m]).norm().item() / (1e-5 + fs[:, k % m].norm().item())
        if host_reads is not None:
            host_reads[0] += 2
        if residual < tol:
            break
    return xs[:, k % m].view_as(x0)


def reference_solve(f, z0, *, max_iter, tol, **unused):
    """The reference Anderson behind the solver signature, so the adjoint solve reuses wtext's implicit backward
    with only the solver swapped."""
    return reference_anderson(f, z0, max_iter=max_iter, tol=tol), None


def reference_step(cell, x, args, host_reads=None):
    f = lambda z: cell(z, x)  # noqa: E731
    with torch.no_grad():
        z_star = reference_anderson(f, torch.zeros_like(x), max_iter=args.iters, tol=1e-12, host_reads=host_reads)
    z = ImplicitGradient.apply(f(z_star), z_star, f, reference_solve, dict(max_iter=args.backward_iters, tol=1e-12),
                               [])
    z.float().square().mean().backward()


def wtext_step(layer, x):
    out = layer(x)
    out.z.float().square().mean().backward()


@contextlib.contextmanager
def counting_host_reads(device):
    """Counts host synchronizations: CUDA's sync debug warnings on a GPU, Tensor.item()/tolist() calls on the CPU."""
    counter = [0]
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield counter
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counter[0] = sum("synchroniz" in str(w.message) for w in caught)
        return
    originals = torch.Tensor.item, torch.Tensor.tolist

    def counted(original):
        def wrapper(self, *a, **k):
            counter[0] += 1
            return original(self, *a, **k)
        return wrapper

    torch.Tensor.item, torch.Tensor.tolist = counted(originals[0]), counted(originals[1])
    try:
        yield counter
    finally:
        torch.Tensor.item, torch.Tensor.tolist = originals


def print_cell_share(cell, x, args, autocast, reference_ms, device):
    """How much of a step is the cell itself (the part no solver can speed up): the time of the step's cell
    evaluations and vector-Jacobian products alone, and the ratio to the reference that this leaves as a floor.
    The cell is timed back to back (steady state), as it runs inside a step: timing each call alone adds a launch
    latency per kernel, which on the lent GPU VM made this floor 0.49x where the step's profile left at most 0.40x."""
    z = torch.randn_like(x)
    with autocast:
        cell.refresh(device)
    with torch.no_grad(), autocast:
        cell_ms = measure(lambda: cell(z, x), device, args.warmup, args.repeats).steady
    with autocast, torch.enable_grad():
        z_grad = z.clone().requires_grad_()
        fz = cell(z_grad, x)
    y = torch.randn_like(fz)
    vjp_ms = measure(lambda: torch.autograd.grad(fz, z_grad, y, retain_graph=True), device, args.warmup,
                     args.repeats).steady
    # forward: `iters` evaluations plus one with the graph; backward: one re-evaluation, `backward_iters` VJPs and
    # the final backward to the parameters (about one more VJP)
    floor = (args.iters + 2) * cell_ms + (args.backward_iters + 1) * vjp_ms
    print(f"\ncell alone (steady state): forward {cell_ms:.3f} ms, vector-Jacobian product {vjp_ms:.3f} ms; "
          f"the step's cell work {floor:.2f} ms = {floor / reference_ms:.2f}x the reference "
          f"(the lowest ratio any solver could reach with the same cell and iteration counts)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=18, help="forward solver iterations (default 18)")
    parser.add_argument("--backward-iters", type=int, default=20, help="adjoint solver iterations (default 20)")
    parser.add_argument("--bf16", action="store_true", help="run the cell under bfloat16 autocast (CUDA)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print the kernels of one wtext step by time")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a visible GPU")
    torch.manual_seed(0)
    cell = ShippedCell(args.channels).to(device)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    if device.type == "cuda":
        cell = cell.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    config = deq.DEQConfig(f_solver="anderson", f_max_iter=args.iters, f_tol=1e-12, b_solver="anderson",
                           b_max_iter=args.backward_iters, b_tol=1e-12, backward="implicit")
    layer = deq.DEQ(cell, config).train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16 and device.type == "cuda")

    def run_reference():
        with autocast:
            cell.refresh(device)
            reference_step(cell, x, args)

    def run_wtext():
        with autocast:
            cell.refresh(device)
            wtext_step(layer, x)

    rows = [("PyTorch Anderson, .item() per step + implicit", median_ms(run_reference, device, args.warmup, args.repeats)),
            ("wtext DEQ (anderson_tracked_step op) + implicit", median_ms(run_wtext, device, args.warmup, args.repeats))]
    print(f"torch {torch.__version__}, {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print_table(f"workload B DEQ training step: batch {args.batch}, C={args.channels}, {args.size}x{args.size}, "
                f"{args.iters} forward / {args.backward_iters} backward iterations{', bf16' if args.bf16 else ''}",
                rows, "PyTorch Anderson, .item() per step + implicit")

    with torch.no_grad(), autocast:
        cell.refresh(device)
        f = lambda z: cell(z, x)  # noqa: E731
        with counting_host_reads(device) as reference_reads:
            reference_anderson(f, torch.zeros_like(x), max_iter=args.iters, tol=1e-12)
        with counting_host_reads(device) as wtext_reads:
            deq.get_solver("anderson")(f, torch.zeros_like(x), max_iter=args.iters, tol=1e-12)
    kind = "CUDA synchronizations" if device.type == "cuda" else "Tensor.item()/tolist() calls"
    print(f"\nhost reads in one forward solve ({kind}): reference {reference_reads[0]}, wtext {wtext_reads[0]}")
    print_cell_share(cell, x, args, autocast, dict(rows)["PyTorch Anderson, .item() per step + implicit"], device)
    if args.profile:
        print_profile("one wtext step", run_wtext, device)


if __name__ == "__main__":
    main()
