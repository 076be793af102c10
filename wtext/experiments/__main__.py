"""Reproduce the paper's experiments, one command each.

    python -m wtext.experiments list
    python -m wtext.experiments NAME [--scale quick|paper] [--data-dir DIR] [--dataset cifar10|imagenet32]
                                     [--out results/NAME] [--epochs N] [--train-images N] [--test-images N]
                                     [--dry-run]

NAME: masks, density, width-depth, deq, cka, quality (docs/experiments.md maps each to the claim it checks). Every run
trains into OUT/runs/RUN; runs that already finished with the same options are skipped, so an interrupted sweep
resumes. OUT gets results.md (table), a PNG plot and results.json (raw metrics of every run).
"""

import argparse
import sys
import time
from pathlib import Path

from .definitions import EXPERIMENTS, SCALES
from .sweep import PlanShown, Sweep


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wtext.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["list", *EXPERIMENTS], help="an experiment, or list")
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick",
                        help="quick: synthetic data, tiny models, CPU minutes; paper: paper-sized, needs --data-dir")
    parser.add_argument("--data-dir", help="CIFAR-10 / ImageNet32 files (paper scale)")
    parser.add_argument("--dataset", choices=["cifar10", "imagenet32"], help="paper-scale data set (default cifar10)")
    parser.add_argument("--out", help="results directory (default results/NAME-SCALE)")
    parser.add_argument("--epochs", type=int, help="override the scale's epochs")
    parser.add_argument("--train-images", type=int, help="override the synthetic training images (quick scale)")
    parser.add_argument("--test-images", type=int, help="override the synthetic test images (quick scale)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and check their options; train nothing")
    args = parser.parse_args(argv)
    if args.name == "list":
        for experiment in EXPERIMENTS.values():
            print(f"{experiment.name:<12} {experiment.claim}")
        return 0
    base = dict(SCALES[args.scale], device=args.device)
    if args.scale == "paper":
        if not args.data_dir:
            parser.error("--scale paper trains on CIFAR-10 or ImageNet32: give --data-dir")
        base.update(data_dir=args.data_dir, dataset=args.dataset or "cifar10")
    given = {field: getattr(args, option) for option, field in
             (("epochs", "epochs"), ("train_images", "synthetic_train"), ("test_images", "synthetic_test"))
             if getattr(args, option) is not None}
    experiment = EXPERIMENTS[args.name]
    out_dir = Path(args.out or f"results/{args.name}-{args.scale}")
    if not args.dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"{experiment.name} ({args.scale} scale) -> {out_dir}\nclaim: {experiment.claim}", flush=True)
    sweep = Sweep(out_dir, base, lambda message: print(message, flush=True), dry_run=args.dry_run, given=given)
    try:
        body = experiment.run(out_dir, args.scale, sweep)
    except PlanShown:
        return 0
    except (ValueError, FileNotFoundError) as error:
        print(f"wtext.experiments: error: {error}", file=sys.stderr)
        return 2
    report = (f"# {experiment.name} ({args.scale} scale)\n\nClaim checked: {experiment.claim}\n\n{body}\n\n"
              f"Raw metrics of every run: results.json and runs/*/metrics.jsonl. Wall time "
              f"{time.perf_counter() - start:.0f} s.\n")
    (out_dir / "results.md").write_text(report)
    print("\n" + report, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
