"""What an early end of the DEQ solves buys: one training step (forward solve + loss + implicit backward with its
adjoint solve) of the shipped DEQ twin, built as `python -m wtext.train --deq implicit --deq-check-every K` builds
it (wtext.train.model_builder.model_for), for several K, timed in turns in one run.

K = 0 runs every solve's whole budget with no host read (the default: no synchronization, CUDA-graph capturable);
K >= 1 reads `active.any()` to the host after every K-th iteration and ends the solve when no sample is iterating.
The result is the same (tested), so the table is all there is to it: time per step, the steps the samples took
(batch mean) and the iterations the loops ran (forward: mean over the stages' solves; the loop runs until the
first test after its slowest sample stopped), and the ratio to K = 0.

The tolerances decide whether anything ends early, so a table is printed per tolerance (--tols): the variant's
own (f_tol 1e-3, b_tol 1e-6: at the start of training every sample of this model runs the whole budget, so that
table measures only what the host reads cost, the steps being the same in every row) and looser ones, the same
for the forward and the adjoint solve (3e-2, where an earlier measurement saw every sample stop after 12-13 of 20
iterations, and 1e-1), where solves do end early and the saved iterations show.

    OMP_NUM_THREADS=1 python benchmarks/bench_deq_check.py --device cpu          # resnet-tiny, batch 32
    python benchmarks/bench_deq_check.py --device cuda --bf16                     # batch 128, channels_last
"""

import argparse
import dataclasses
import statistics

import torch
import torch.nn.functional as F

from timing import add_interleaving_options, interleaved_round_ms
from wtext.data import DeviceLoader, load_dataset
from wtext.train import TrainConfig
from wtext.train.model_builder import model_for

CHECKS = (0, 1, 2, 4, 8)


def build_cases(args, device, images, labels):
    """A training step per K, each on its own copy of one model (same weights), and its solver statistics."""
    base = None
    cases = {}
    for every in CHECKS:
        config = TrainConfig(model=args.model, width=args.width, deq=args.variant, deq_check_every=every,
                             device=device.type)
        model = model_for(config, 10)
        if base is None:
            base = model.state_dict()
        model.load_state_dict(base)
        if args.tol is not None:  # this table's tolerances (the model makes its DEQ layers from config.deq)
            deq = dataclasses.replace(model.config.deq, f_tol=args.tol, b_tol=args.tol)
            model.config = dataclasses.replace(model.config, deq=deq)
        model = model.to(device).train()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        cases[every] = model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16 and device.type == "cuda")

    def step(model):
        with autocast:
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return model

    return {every: (lambda model=model: step(model)) for every, model in cases.items()}


def solve_statistics(model) -> dict:
    """Steps of the last step's solves, forward and adjoint: the batch mean of the samples' steps, and the loop
    iterations the solves ran (until the first test after the slowest sample stopped), both averaged over solves."""
    forward = [out.stats for out in model.deq_outputs]
    adjoint = [stats for out in model.deq_outputs for stats in out.backward_stats]

    def mean(values):
        return statistics.fmean(values) if values else float("nan")

    return {
        "f_steps": mean([s.steps.float().mean().item() for s in forward]),
        "f_loop": mean([s.iterations for s in forward]),
        "b_steps": mean([s.steps.float().mean().item() for s in adjoint]),
        "b_loop": mean([s.iterations for s in adjoint]),
    }


def interleaved_ms(cases: dict, device: torch.device, warmup: int, repeats: int, rounds: int) -> dict:
    """(median, min) over rounds of each case's mean time per call, timed in turns. The minimum is the figure
    least touched by other processes on a shared machine (they only ever add time)."""
    times = interleaved_round_ms(cases, device, warmup, repeats, rounds)
    return {name: (statistics.median(values), min(values)) for name, values in times.items()}


def run_table(title: str, args, device, images, labels) -> None:
    steps = build_cases(args, device, images, labels)
    statistics_by_k = {every: solve_statistics(fn()) for every, fn in steps.items()}
    ms = interleaved_ms(steps, device, args.warmup, args.repeats, args.rounds)
    deq = steps[0]().config.deq
    print(f"\n{title}: f_tol {deq.f_tol:g} / b_tol {deq.b_tol:g} ({deq.f_stop_mode}), budgets {deq.f_max_iter} / "
          f"{deq.b_max_iter}")
    print(f"{'check_every':>11} | {'ms/step median':>14} | {'vs k=0':>6} | {'min':>7} | {'vs k=0':>6} | "
          f"{'fwd steps':>9} | {'fwd loop':>8} | {'bwd steps':>9} | {'bwd loop':>8}")
    for every in CHECKS:
        s, (median, low) = statistics_by_k[every], ms[every]
        print(f"{every:>11} | {median:14.1f} | {median / ms[0][0]:5.3f}x | {low:7.1f} | {low / ms[0][1]:5.3f}x | "
              f"{s['f_steps']:9.2f} | {s['f_loop']:8.1f} | {s['b_steps']:9.2f} | {s['b_loop']:8.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet-tiny")
    parser.add_argument("--width", type=int, default=None, help="default: the preset's")
    parser.add_argument("--variant", default="implicit", help="DEQ variant (wtext.models.DEQ_VARIANTS)")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on the CPU, 128 on CUDA")
    parser.add_argument("--tols", default="variant,3e-2,1e-1",
                        help="one table per entry: 'variant' (its own tolerances) or a forward and backward tolerance")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CUDA, as training runs there")
    add_interleaving_options(parser, warmup=1, repeats=1, rounds=9)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a visible GPU")
    batch = args.batch or (128 if device.type == "cuda" else 32)
    torch.manual_seed(0)
    data = load_dataset("synthetic", device=device, synthetic_train=batch, synthetic_test=1, seed=0)
    loader = DeviceLoader(data.train, batch, data.mean, data.std, train=False, channels_last=device.type == "cuda")
    images, labels = next(iter(loader.epoch(0)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {device} ({name}); {args.model} DEQ {args.variant}, batch {batch}, "
          f"{'bf16' if args.bf16 and device.type == 'cuda' else 'fp32'}; {args.rounds} rounds x {args.repeats} steps "
          f"per case, in turns; steps: batch mean of the samples' steps, loop: iterations the solves ran (means over "
          f"the stages' solves)")
    for entry in args.tols.split(","):
        args.tol = None if entry == "variant" else float(entry)
        run_table("the variant's tolerances" if args.tol is None else "looser tolerances", args, device, images,
                  labels)


if __name__ == "__main__":
    main()
