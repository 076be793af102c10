"""Reading the JSON files an experiment keeps in its results folder: each run's config.json, summary.json and
metrics.jsonl (OUT/runs/RUN/seed-S), the folder's experiment.json, a pilot's results.json. Every read goes through
here, so that a damaged file is an error naming it and saying what to do, never a bare JSON error or a traceback.

These files outlive the process that wrote them: a run killed mid-write, a full disk, a hand edit or a sync tool can
leave one empty, cut short or holding something else. For a run's files the way out is always the same: delete that
run's folder, and the same command trains the run again (every other run is kept).
"""

import json
from pathlib import Path

# What every finished run's summary.json holds, and every record of its metrics.jsonl: the entries the experiments'
# tables, verdicts and plots read.
SUMMARY_KEYS = ("parameters", "effective_parameters", "epochs", "best_test_accuracy", "final_test_accuracy")
RECORD_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "time_s")


class DamagedFile(ValueError):
    """A results file that cannot be used as it is; the message names it, the problem and the remedy."""

    def __init__(self, path: Path, problem: str, remedy: str):
        super().__init__(f"{path}: {problem}; {remedy}")
        self.path, self.problem, self.remedy = Path(path), problem, remedy


def _json_kind(value) -> str:
    kinds = {list: "a JSON list", str: "a JSON string", bool: "a JSON boolean", int: "a JSON number",
             float: "a JSON number", type(None): "JSON null"}
    return kinds.get(type(value), type(value).__name__)


def _read_text(path: Path, remedy: str) -> str | None:
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise DamagedFile(path, "is not a regular file", remedy)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedFile(path, f"cannot be read ({error})", remedy) from None


def _parse_object(path: Path, text: str, remedy: str, where: str = ""):
    """The JSON object in `text` (one file, or one line of a .jsonl file: `where` says which)."""
    if not text.strip():
        raise DamagedFile(path, f"{where}is empty", remedy)
    try:
        value = json.loads(text)
    except ValueError as error:  # json.JSONDecodeError
        raise DamagedFile(path, f"{where}is not valid JSON ({error})", remedy) from None
    except RecursionError:  # thousands of nested brackets
        raise DamagedFile(path, f"{where}is not valid JSON (nested too deeply)", remedy) from None
    if not isinstance(value, dict):
        raise DamagedFile(path, f"{where}holds {_json_kind(value)}, not a JSON object", remedy)
    return value


def read_json_object(path: Path, remedy: str) -> dict | None:
    """The JSON object in the file at `path`, or None when there is no file there. remedy: what the error tells the
    user to do about a damaged file."""
    text = _read_text(path, remedy)
    return None if text is None else _parse_object(path, text, remedy)


def read_json_lines(path: Path, remedy: str) -> list[dict] | None:
    """The JSON objects of a .jsonl file, one a line (blank lines skipped), or None when there is no file there."""
    text = _read_text(path, remedy)
    if text is None:
        return None
    return [_parse_object(path, line, remedy, where=f"line {number} ")
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def run_remedy(run_dir: Path) -> str:
    return f"delete the folder {run_dir} and run the same command again to train that run anew"


def read_run_config(run_dir: Path) -> dict | None:
    """The options a run was trained with (its config.json), or None before it was started."""
    return read_json_object(run_dir / "config.json", run_remedy(run_dir))


def read_run_summary(run_dir: Path) -> dict | None:
    """A run's summary.json, or None before it finished."""
    return read_json_object(run_dir / "summary.json", run_remedy(run_dir))


def read_finished_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """A finished run's summary and its metrics per epoch, checked to hold what the experiments read: the summary's
    entries (SUMMARY_KEYS) and one record (RECORD_KEYS) per epoch it counts."""
    remedy = run_remedy(run_dir)
    summary, metrics = read_run_summary(run_dir), read_json_lines(run_dir / "metrics.jsonl", remedy)
    for name, found in (("summary.json", summary), ("metrics.jsonl", metrics)):
        if found is None:
            raise DamagedFile(run_dir / name, "not found although the run is finished", remedy)
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise DamagedFile(run_dir / "summary.json", f"has no {', '.join(missing)} (not a finished run's summary)",
                          remedy)
    for number, record in enumerate(metrics, start=1):
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise DamagedFile(run_dir / "metrics.jsonl", f"line {number} has no {', '.join(missing)} (not an "
                                                         f"epoch's metrics)", remedy)
    if len(metrics) != summary["epochs"]:
        raise DamagedFile(run_dir / "metrics.jsonl", f"holds {len(metrics)} epochs' records, but summary.json "
                                                     f"says {summary['epochs']!r} epochs", remedy)
    return summary, metrics
