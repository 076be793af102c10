"""python -m wtext.masks: learned masks after training.

    python -m wtext.masks freeze RUN [--output FILE]   the masks of RUN (a run directory or a checkpoint file) as
                                                      bits in the checkpoint, instead of their scores (in place by
                                                      default, atomically)
    python -m wtext.masks show RUN                     per tied weight: density, pairwise Hamming distance between
                                                      the applications' masks, share still equal to the seed start
"""

import argparse
import sys

from wtext.train.checkpoint import load_checkpoint

from .freeze import freeze_checkpoint, model_of_checkpoint
from wtext.analysis.mask_statistics import learned_mask_statistics


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m wtext.masks", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    freeze = commands.add_parser("freeze", help="store a run's learned masks as bits (1 per weight per application)")
    freeze.add_argument("run", help="run directory (its checkpoint.pt) or checkpoint file")
    freeze.add_argument("--output", default=None, help="write the frozen checkpoint here (default: in place)")
    show = commands.add_parser("show", help="what a run's learned masks became")
    show.add_argument("run", help="run directory (its checkpoint.pt) or checkpoint file")
    return parser.parse_args(argv)


def show(run: str) -> None:
    from pathlib import Path

    path = Path(run)
    path = path / "checkpoint.pt" if path.is_dir() else path
    _, model = model_of_checkpoint(load_checkpoint(path, "cpu"), path)
    rows = learned_mask_statistics(model)
    if not rows:
        raise ValueError(f"{path}: the model has no learned masks")
    print(f"{'weight':<28} {'L':>3} {'density':>8} {'hamming':>8} {'random':>8} {'= start':>8}  state")
    for row in rows:
        print(f"{row['weight']:<28} {row['applications']:>3} {row['density']:>8.4f} {row['hamming']:>8.4f} "
              f"{row['hamming_independent']:>8.4f} {row['equal_to_start']:>8.4f}  "
              f"{'frozen' if row['frozen'] else 'scores'}")


def main(argv=None) -> int:
    args = parse(argv)
    try:
        if args.command == "freeze":
            report = freeze_checkpoint(args.run, args.output)
            print(f"froze {report.masks} learned masks of {report.source} into {report.output}: "
                  f"{report.bytes_before:,} -> {report.bytes_after:,} bytes")
        else:
            show(args.run)
    except (FileNotFoundError, ValueError) as error:
        print(f"wtext.masks: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
