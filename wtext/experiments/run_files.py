"""Reading a finished run of an experiment (OUT/runs/RUN/seed-S): its summary.json and metrics.jsonl, checked to hold
what the tables, verdicts and plots read. A damaged file is an error naming it (wtext.json_files); for a run's files
the way out is always the same: delete that run's folder, and the same command trains the run again (every other
run is kept).
"""

from pathlib import Path

from wtext.json_files import DamagedFile, read_json_lines
from wtext.train.run_dir import read_run_summary, run_remedy

# What every finished run's summary.json holds, and every record of its metrics.jsonl: the entries the experiments'
# tables, verdicts and plots read.
SUMMARY_KEYS = ("parameters", "effective_parameters", "epochs", "best_test_accuracy", "final_test_accuracy")
RECORD_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "time_s")


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
