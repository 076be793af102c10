"""Running a sweep of training runs into one results directory: finished runs are skipped, so an interrupted sweep
resumes where it stopped."""

import dataclasses
import json
from pathlib import Path

from wtext.train import TrainConfig, run


def run_sweep(out_dir: Path, base: dict, runs: dict[str, dict], log=print,
              given: dict | None = None) -> dict[str, dict]:
    """Trains every run (base options, updated by the run's, then by `given`: the options the user gave on the
    command line, which win) into out_dir/runs/NAME; returns {name: result}, where a result holds the run's
    summary, its metrics per epoch and its resolved config."""
    results = {}
    for index, (name, overrides) in enumerate(runs.items(), start=1):
        run_dir = out_dir / "runs" / name
        summary_path = run_dir / "summary.json"
        config = TrainConfig(**{**base, **overrides, **(given or {}), "run_dir": str(run_dir)})
        if summary_path.is_file() and _same_config(run_dir, config):
            log(f"[{index}/{len(runs)}] {name}: done before, skipped")
        else:
            log(f"[{index}/{len(runs)}] {name}: training")
            run(config)
        results[name] = {
            "summary": json.loads(summary_path.read_text()),
            "metrics": [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()],
            "config": dataclasses.asdict(config),
        }
    return results


def _same_config(run_dir: Path, config: TrainConfig) -> bool:
    """A finished run counts only if it was made with the same options (a changed sweep re-runs it)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return False
    saved = json.loads(path.read_text())
    current = dataclasses.asdict(config)
    ignored = {"progress", "resume", "run_dir", "device"}
    return all(saved.get(k) == v for k, v in current.items() if k not in ignored)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class PlanShown(Exception):
    """Raised by a dry-run sweep once it has shown its plan."""


class Sweep:
    """What an experiment trains its runs with: run(runs) trains (or, dry_run, lists and validates) them.
    base: the scale's options, which a run's own options override; given: options from the command line, which
    override both."""

    def __init__(self, out_dir: Path, base: dict, log=print, dry_run: bool = False, given: dict | None = None):
        self.out_dir, self.base, self.log, self.dry_run = out_dir, base, log, dry_run
        self.given = given or {}

    def run(self, runs: dict[str, dict]) -> dict[str, dict]:
        if not self.dry_run:
            return run_sweep(self.out_dir, self.base, runs, self.log, self.given)
        from wtext.models import describe
        from wtext.train.model_builder import model_for

        for name, overrides in runs.items():
            config = TrainConfig(**{**self.base, **overrides, **self.given,
                                    "run_dir": str(self.out_dir / "runs" / name)})
            facts = describe(model_for(config, 10 if config.dataset != "imagenet32" else 1000))
            changed = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "base options"
            self.log(f"{name:<22} {changed:<48} {facts['stored']:>12,} params  {config.epochs} epochs on "
                     f"{config.dataset}")
        raise PlanShown
