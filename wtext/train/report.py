"""What a run leaves behind: metrics.jsonl (one line per epoch), summary.json, curves.png, and the final table."""

import json
from pathlib import Path


def append_metrics(run_dir: Path, record: dict) -> None:
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    """Rewrites metrics.jsonl with exactly these records (on resume: the epochs the checkpoint says finished)."""
    from wtext.safe_files import write_text_atomic

    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def plot_curves(run_dir: Path, records: list[dict]) -> Path | None:
    """curves.png: loss and accuracy per epoch, train and test. None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [r["epoch"] for r in records]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    loss_axis.plot(epochs, [r["test_loss"] for r in records], "o-", label="test")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    accuracy_axis.plot(epochs, [r["train_accuracy"] for r in records], "o-", label="train")
    accuracy_axis.plot(epochs, [r["test_accuracy"] for r in records], "o-", label="test")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path = run_dir / "curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def final_table(summary: dict) -> str:
    rows = [
        ("model", summary["model"]),
        ("parameters (stored)", f"{summary['parameters']:,}"),
        ("trainable parameters", f"{summary.get('trainable_parameters', summary['parameters']):,}"),
        ("effective parameters / application", f"{summary['effective_parameters']:,.0f}"),
        ("epochs", summary["epochs"]),
        ("best test accuracy", f"{summary['best_test_accuracy']:.4f} (epoch {summary['best_epoch']})"),
        ("final test accuracy", f"{summary['final_test_accuracy']:.4f}"),
        ("training images/s", f"{summary['images_per_second']:.0f}"),
        ("wall time", f"{summary['wall_time_s']:.1f} s"),
        ("run directory", summary["run_dir"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
