"""Reproduce the paper's experiments, one command each, with several seeds and a verdict per claim.

    python -m wtext.experiments list
    python -m wtext.experiments plan NAME [--effect E] [--power P] [--pilot DIR] [--scale S] [--device D]
                                          [--workers N]     (seeds and GPU-hours that would decide each claim)
    python -m wtext.experiments NAME [--scale quick|paper] [--seeds N] [--dataset NAME] [--data-dir DIR]
                                     [--model PRESET] [--width W] [--depth D] [--mask-mode MODE] [--epochs N]
                                     [--batch-size B]
                                     [--train-images N] [--test-images N] [--device DEV] [--out DIR]
                                     [--dry-run] [--worker I/N|slurm] [--no-train] [--fuse [--fuse-max K]]
                                     [--effect E]

NAME: see `list` (docs/experiments.md maps each to the claim it checks). Every run is trained once per seed into
OUT/runs/RUN/seed-S; finished ones are skipped and interrupted ones resume from their checkpoint, so a stopped
sweep continues where it stopped. OUT gets results.md (tables with mean ± std over seeds and a verdict per claim),
a PNG plot with error bars and results.json (every seed's metrics and the comparisons). OUT belongs to the first
experiment run there (OUT/experiment.json): another experiment is refused it, so it cannot replace the results. A
damaged file in a run's folder is an error naming it: delete that run's folder and the same command retrains it.

Spreading a sweep over machines: start N workers with --worker 1/N ... N/N (or, in a Slurm job array,
--worker slurm); each trains its share of the (run, seed) jobs into the shared OUT and stops. Then run the same
command without --worker (add --no-train to refuse training anything still missing) to write the tables.
"""

import argparse
import sys
import time
from pathlib import Path

from wtext.data.datasets import DATASETS
from wtext.models import PRESETS
from wtext.nn import MASK_MODES
from wtext.train import Interrupted, NonFiniteLoss
from wtext.train.tensorboard_log import summary_writer_class

from .definitions import EXPERIMENTS, SCALES
from .results_folder import check_owner, claim
from .sweep import PlanShown, Sweep, WorkerFinished, parse_worker

DEFAULT_SEEDS = {"quick": 3, "paper": 3}
# Command-line options that set a TrainConfig field of every run: (option, field).
RUN_OPTIONS = (("dataset", "dataset"), ("data_dir", "data_dir"), ("model", "model"), ("width", "width"),
               ("depth", "depth"), ("mask_mode", "mask_mode"), ("epochs", "epochs"), ("batch_size", "batch_size"),
               ("train_images", "synthetic_train"), ("test_images", "synthetic_test"))


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0; got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0; got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wtext.experiments", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["list", *EXPERIMENTS], help="an experiment, or list")
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick",
                        help="quick: synthetic data, tiny models, CPU minutes; paper: paper-sized models on CIFAR-10 "
                             "or ImageNet32 (needs --data-dir), a GPU job")
    parser.add_argument("--seeds", type=positive_int,
                        help=f"seeds per run (0 .. N-1); default {DEFAULT_SEEDS['quick']}")
    parser.add_argument("--dataset", choices=DATASETS, help="data of every run (default: the scale's)")
    parser.add_argument("--data-dir", help="folder with CIFAR-10 / ImageNet32 files")
    parser.add_argument("--model", choices=sorted(PRESETS), help="model preset of the runs that do not set their own")
    parser.add_argument("--width", type=positive_int, help="width of the runs that do not set their own")
    parser.add_argument("--depth", type=positive_int, help="depth of the runs that do not set their own")
    parser.add_argument("--mask-mode", choices=MASK_MODES,
                        help="mask mode of the runs that do not set their own; deq applies it to every arm, its DEQ "
                             "twins included (e.g. learned)")
    parser.add_argument("--epochs", type=positive_int, help="epochs of every run")
    parser.add_argument("--batch-size", type=positive_int, help="batch size of every run")
    parser.add_argument("--train-images", type=positive_int, help="training images of the synthetic set")
    parser.add_argument("--test-images", type=positive_int, help="test images of the synthetic set")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", help="results directory (default results/NAME-SCALE)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs with a wall-time estimate each (from a few measured steps of every "
                             "distinct model on the chosen device); train nothing")
    parser.add_argument("--worker", type=str, metavar="I/N|slurm",
                        help="train only this worker's share of the runs (the I-th of every N) and stop")
    parser.add_argument("--fuse", action="store_true",
                        help="train the runs that share an architecture (ResNet, not DEQ) as horizontally fused "
                             "groups: one model of grouped convolutions, each run with its own masks, optimizer, "
                             "data order and files (docs/fused.md)")
    parser.add_argument("--fuse-max", type=positive_int, help="at most this many runs per fused group")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: write the tables from finished runs, or say which are missing")
    parser.add_argument("--tensorboard", action="store_true",
                        help="every run writes TensorBoard event files (RUN_DIR/tensorboard); one TensorBoard over "
                             "OUT/runs shows the whole sweep (needs the tensorboard package)")
    parser.add_argument("--effect", type=positive_float,
                        help="a difference to size the seeds for: the verdict table gets the seeds each claim needs "
                             "to detect it (power 0.8), in the claim's own units (accuracy 0.01 = 1 point)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plan"]:
        from .planning import main as plan

        return plan(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name == "list":
        for experiment in EXPERIMENTS.values():
            print(f"{experiment.name:<14} {experiment.claim}")
        return 0
    try:
        worker = parse_worker(args.worker) if args.worker is not None else None
    except ValueError as error:
        parser.error(str(error))
    if worker is not None and args.no_train:
        parser.error("--worker trains its share and --no-train trains nothing: give one of them")
    if args.fuse_max is not None and not args.fuse:
        parser.error("--fuse-max limits the groups of --fuse: give --fuse too")
    base = dict(SCALES[args.scale], device=args.device, tensorboard=args.tensorboard)
    dataset = args.dataset or base["dataset"]
    # A dry run times synthetic images of the same shape: it reads no files.
    if dataset in ("cifar10", "imagenet32") and not args.data_dir and not args.dry_run:
        parser.error(f"{dataset} is read from files: give --data-dir (at --scale paper the default data set is "
                     f"cifar10)")
    if args.model is not None:  # the scale's width and depth belong to its own preset
        base.update(width=None, depth=None)
    given = {field: getattr(args, option) for option, field in RUN_OPTIONS if getattr(args, option) is not None}
    if worker is not None and args.device == "auto":
        import torch

        if torch.cuda.device_count() > 1:  # local workers on a multi-GPU node take one GPU each
            given["device"] = f"cuda:{worker[0] % torch.cuda.device_count()}"
    seeds = tuple(range(args.seeds or DEFAULT_SEEDS[args.scale]))
    experiment = EXPERIMENTS[args.name]
    out_dir = Path(args.out or f"results/{args.name}-{args.scale}")
    if out_dir.exists() and not out_dir.is_dir():
        parser.error(f"--out {out_dir} is a file; give a directory")
    if args.tensorboard and not args.dry_run:
        try:
            summary_writer_class()
        except ValueError as error:
            parser.error(str(error))
    try:
        if args.dry_run:  # a dry run writes nothing, not even the folder's record of its experiment
            check_owner(out_dir, experiment.name)
        else:
            claim(out_dir, experiment.name)
    except ValueError as error:
        print(f"wtext.experiments: error: {error}", file=sys.stderr)
        return 2
    if args.tensorboard and not args.dry_run:
        print(f"TensorBoard: tensorboard --logdir {out_dir / 'runs'}", flush=True)
    start = time.perf_counter()
    print(f"{experiment.name} ({args.scale} scale, {len(seeds)} seed(s)) -> {out_dir}\nclaim: {experiment.claim}",
          flush=True)
    sweep = Sweep(out_dir, base, lambda message: print(message, flush=True), dry_run=args.dry_run, given=given,
                  seeds=seeds, worker=worker, train=not args.no_train, fuse=args.fuse, fuse_max=args.fuse_max,
                  effect=args.effect)
    try:
        body = experiment.run(out_dir, args.scale, sweep)
    except (PlanShown, WorkerFinished):
        return 0
    except (ValueError, FileNotFoundError) as error:
        print(f"wtext.experiments: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLoss as error:
        print(f"wtext.experiments: error: {error}\n(the sweep stops; the other runs are kept)", file=sys.stderr)
        return 3
    except (KeyboardInterrupt, Interrupted):
        print("wtext.experiments: interrupted; the same command resumes the sweep where it stopped", file=sys.stderr)
        return 130
    report = (f"# {experiment.name} ({args.scale} scale)\n\nClaim checked: {experiment.claim}\n\n{body}\n\n"
              f"Raw metrics of every run and seed: results.json and runs/*/seed-*/metrics.jsonl. Wall time "
              f"{time.perf_counter() - start:.0f} s.\n")
    (out_dir / "results.md").write_text(report)
    print("\n" + report, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
