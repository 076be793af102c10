"""How exact the reversible DEQ gradient is on the shipped ResNet DEQ twin: for each rev_beta, step count and
precision, the relative error of the reversible gradient (all parameters, one training batch) against
back-propagation through the same unrolled coupled iteration in the same precision and against that gradient in
float64, with the reconstruction statistics the backward pass reports.

    python benchmarks/bench_reversible_error.py                      # resnet-tiny, batch 8, CPU
    python benchmarks/bench_reversible_error.py --model resnet-small --betas 0.5 0.8 --steps 8 16

Precisions: float64 (model and state), float32 (model float32, state float64: the default), float32-state32
(model and state float32), bf16 (bf16 autocast, state float64). Images are a fixed random batch (a numerical
property of the iteration, not a claim about learning); --trained N first trains the float32 model N steps on the
digits so the cell is measured as training leaves it, not only at initialization.
"""

import argparse
import contextlib
import copy
import dataclasses
import warnings

import torch
import torch.nn.functional as F

from wtext import models
from wtext.deq import DEQConfig
from wtext.deq.reversible import ReconstructionWarning

PRECISIONS = {
    "float64": (torch.float64, "float64", None),
    "float32": (torch.float32, "float64", None),
    "float32-state32": (torch.float32, "float32", None),
    "bf16": (torch.float32, "float64", torch.bfloat16),
}


def with_backward(model, backward: str, beta: float, steps: int, state: str):
    """A copy of model whose DEQ twin uses this backward mode, beta, step budget and state dtype (full budget)."""
    model.deq_outputs = []  # the last forward's solves hold graphs, which deepcopy refuses
    twin = copy.deepcopy(model)
    twin.config = dataclasses.replace(twin.config, deq=DEQConfig(backward=backward, rev_beta=beta, f_max_iter=steps,
                                                                 f_tol=1e-30, rev_state_dtype=state))
    return twin


def gradient(model, images, labels, autocast_dtype):
    """(all parameter gradients as one float64 vector, the reconstruction statistics of the step)."""
    model.zero_grad(set_to_none=True)
    context = (torch.autocast(images.device.type, dtype=autocast_dtype) if autocast_dtype
               else contextlib.nullcontext())
    with context:
        logits = model(images.to(next(model.parameters()).dtype))
    F.cross_entropy(logits.float(), labels).backward()
    vector = torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None])
    stats = [s for out in model.deq_outputs for s in out.reconstruction]
    return vector, stats


def relative(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def trained(model, steps: int, batch: int):
    """The model after `steps` Adam steps on the digits (8x8 images scaled to 32x32), trained with its own (unrolled)
    gradient."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1)
    images = F.interpolate(images, size=32, mode="bilinear").expand(-1, 3, -1, -1)
    labels = torch.tensor(digits.target)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(steps):
        index = torch.randint(len(labels), (batch,), generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        F.cross_entropy(model(images[index]), labels[index]).backward()
        optimizer.step()
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet-tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 0.65, 0.8])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--trained", type=int, default=0, help="train this many steps first (unrolled, beta 0.5, 8 steps)")
    args = parser.parse_args()
    torch.manual_seed(0)
    warnings.simplefilter("ignore", ReconstructionWarning)  # the table reports the statistic itself
    base = models.build_model(args.model, deq=DEQConfig(backward="unrolled", f_max_iter=8))
    if args.trained:
        base = trained(base, args.trained, args.batch)
    images = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(10, (args.batch,), generator=torch.Generator().manual_seed(2))
    print(f"{args.model} DEQ twin, batch {args.batch}, {'trained %d steps' % args.trained if args.trained else 'at initialization'}")
    print(f"{'beta':>5} {'steps':>5} {'precision':>16} | {'rev vs unrolled':>15} {'rev vs f64':>11} "
          f"{'unrolled vs f64':>15} | {'recon error':>11}")
    for beta in args.betas:
        for steps in args.steps:
            reference, _ = gradient(with_backward(base, "unrolled", beta, steps, "float64").double(), images, labels,
                                    None)
            for name in args.precisions:
                dtype, state, autocast_dtype = PRECISIONS[name]
                unrolled, _ = gradient(with_backward(base, "unrolled", beta, steps, state).to(dtype), images, labels,
                                       autocast_dtype)
                rev, stats = gradient(with_backward(base, "reversible", beta, steps, state).to(dtype), images,
                                      labels, autocast_dtype)
                error = max(float(s.error.max()) for s in stats)
                print(f"{beta:>5} {steps:>5} {name:>16} | {relative(rev, unrolled):>15.2e} "
                      f"{relative(rev, reference):>11.2e} {relative(unrolled, reference):>15.2e} | "
                      f"{error:>11.2e}", flush=True)


if __name__ == "__main__":
    main()
