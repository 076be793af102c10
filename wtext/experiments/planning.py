"""python -m wtext.experiments plan: how many seeds, and how many hours, would decide each claim of an experiment.

    python -m wtext.experiments plan NAME --effect 0.01 [--power 0.8] [--pilot DIR | --pilot-seeds 3]
                                          [--scale quick|paper] [--device DEV] [--workers N]

The spread of each claim's per-seed differences comes from a pilot: the results.json of an earlier run of the
experiment (--pilot DIR), or a quick-scale run made now (--pilot-seeds seeds into --pilot-out). From that spread, the
paired t-test's power gives the seeds that detect --effect (in the claim's own units: accuracy 0.01 = 1 point; default
each claim's own observed difference) with --power. The hours are those of the whole experiment trained at that many
seeds at --scale on --device, from the dry-run estimator (a few measured training steps of every distinct model),
and divided over --workers machines. A pilot's spread is an estimate too: at 3 seeds the sample std is itself
uncertain by tens of percent, and the spread at another scale may differ.
"""

import argparse
import math
import sys
from pathlib import Path

from wtext.json_files import DamagedFile, read_json_object

from .definitions import EXPERIMENTS, SCALES
from .results_folder import check_owner
from .statistics import MAX_SEEDS, POWER, check_power_options, mean_std, seeds_needed
from .sweep import PlanShown, Sweep, format_seconds, markdown_table


def probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1); got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .__main__ import positive_float, positive_int

    parser = argparse.ArgumentParser(prog="python -m wtext.experiments plan", description=__doc__,
                                     allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=list(EXPERIMENTS), help="the experiment to plan")
    parser.add_argument("--effect", type=positive_float,
                        help="the difference to detect, in each claim's units (default: each claim's observed "
                             "mean difference in the pilot)")
    parser.add_argument("--power", type=probability, default=POWER, help=f"power to detect it (default {POWER})")
    parser.add_argument("--pilot", help="results directory of an earlier run of the experiment (its results.json)")
    parser.add_argument("--pilot-seeds", type=positive_int, default=3,
                        help="without --pilot: seeds of the quick-scale pilot run now (default 3)")
    parser.add_argument("--pilot-out", help="where the pilot run goes (default results/NAME-pilot); an existing "
                                            "finished pilot there is reused")
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick", help="scale of the planned experiment")
    parser.add_argument("--device", default="auto", help="device the hours are estimated on (auto, cpu, cuda)")
    parser.add_argument("--workers", type=positive_int, default=1, help="machines the seeds are spread over")
    return parser


def pilot_comparisons(path: Path, name: str) -> list[dict]:
    """The comparisons (label, differences) of a pilot's results.json, with errors naming the file."""
    results = path / "results.json"
    if not results.is_file():
        raise ValueError(f"--pilot {path}: no results.json there (run python -m wtext.experiments {name} "
                         f"--out {path} first, or leave --pilot out to run a pilot)")
    check_owner(path, name, flag="--pilot", advice=f"give --pilot a results folder of {name}")
    remedy = f"delete the folder {path} and run the pilot again"
    payload = read_json_object(results, remedy)
    try:
        rows = [{"label": str(c["label"]), "differences": [float(d) for d in c["differences"]]}
                for c in payload["comparisons"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DamagedFile(results, f"not the results.json of a wtext experiment ({type(error).__name__}: "
                                   f"{error})", remedy) from None
    if not rows:
        raise ValueError(f"{results}: the pilot holds no comparisons")
    return rows


def run_pilot(name: str, seeds: int, out: Path, device: str) -> None:
    from .__main__ import main as experiments

    print(f"pilot: {name} at quick scale, {seeds} seeds -> {out}", flush=True)
    status = experiments([name, "--scale", "quick", "--seeds", str(seeds), "--out", str(out), "--device", device])
    if status != 0:
        raise RuntimeError(f"the pilot run of {name} failed (exit status {status}); see its output above")


def seconds_per_seed(name: str, scale: str, device: str) -> tuple[float, str]:
    """The dry-run estimate of the whole experiment at one seed: (seconds, the device it was measured on)."""
    messages = []
    sweep = Sweep(Path(f"results/{name}-{scale}"), dict(SCALES[scale], device=device), messages.append,
                  dry_run=True, seeds=(0,))
    try:
        EXPERIMENTS[name].run(sweep.out_dir, scale, sweep)
    except PlanShown:
        pass
    if sweep.estimated_seconds is None:
        raise RuntimeError(f"the dry run of {name} gave no estimate")
    measured_on = next((m.rsplit(" on ", 1)[1].split(";")[0] for m in messages if m.startswith("estimated total")),
                       device)
    return sweep.estimated_seconds, measured_on


def plan_rows(comparisons: list[dict], effect: float | None, power: float, seed_seconds: float,
              workers: int) -> list[list[str]]:
    """One table row per claim: pilot mean ± std, the effect sized for, seeds needed, hours, wall hours."""
    rows = []
    for comparison in comparisons:
        mean, std = mean_std(comparison["differences"])
        target = abs(mean) if effect is None else effect
        enough = len(comparison["differences"]) >= 2 and std > 0 and not math.isnan(std)
        needed = seeds_needed(target, std, power=power) if enough else None
        if needed is None:
            seeds = "needs a pilot of >= 2 varying seeds" if not enough else f"> {MAX_SEEDS}"
            hours = wall = "—"
        else:
            seeds = str(needed)
            hours = format_seconds(needed * seed_seconds)
            wall = format_seconds(math.ceil(needed / workers) * seed_seconds)
        rows.append([comparison["label"], f"{mean:+.4f} ± {std:.4f}", f"{target:.4g}", seeds, hours, wall])
    return rows


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_power_options(0.05, args.power)
    pilot = Path(args.pilot) if args.pilot else Path(args.pilot_out or f"results/{args.name}-pilot")
    try:
        if not args.pilot and not (pilot / "results.json").is_file():
            run_pilot(args.name, args.pilot_seeds, pilot, args.device)
        comparisons = pilot_comparisons(pilot, args.name)
        print(f"estimating one seed of {args.name} at {args.scale} scale from measured steps ...", flush=True)
        seed_seconds, measured_on = seconds_per_seed(args.name, args.scale, args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"wtext.experiments plan: error: {error}", file=sys.stderr, flush=True)
        return 2
    effect = "each claim's observed difference" if args.effect is None else f"±{args.effect:g}"
    print(f"\n{args.name}: seeds to detect {effect} with power {args.power:g} (paired t-test, two-sided 5%), from "
          f"the spread in {pilot / 'results.json'}; hours for the whole experiment ({format_seconds(seed_seconds)} "
          f"per seed at {args.scale} scale on {measured_on}, dry-run estimate), wall time over {args.workers} "
          f"worker(s):\n")
    header = ["claim", "pilot difference (mean ± std)", "effect", "seeds needed", f"hours on {measured_on}",
              f"wall, {args.workers} worker(s)"]
    print(markdown_table(header, plan_rows(comparisons, args.effect, args.power, seed_seconds, args.workers)))
    return 0
