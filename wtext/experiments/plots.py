"""The PNG plots of the experiments: per-seed values drawn as their mean with the sample std as error bars.

A plot is a value that report() saves into the results directory once results.json is written: Plot for one axis
that an experiment draws on, Panels for several side by side, CkaMaps for the heat maps of CKA matrices.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .measures import final_accuracies, metric_curve
from .statistics import mean_std


def pyplot():
    """matplotlib's pyplot on the Agg backend: plots are files, never windows. Imported on first use, so commands that
    draw nothing do not need it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Panels:
    """file: a 100 dpi PNG of grid-lined axes side by side, 6 x 4 inches each; draws[i](axis) draws panel i."""
    file: str
    draws: list[Callable]

    def save(self, out_dir: Path) -> None:
        if not self.draws:
            raise ValueError(f"{self.file}: Panels needs at least one panel to draw")
        plt = pyplot()
        figure, axes = plt.subplots(1, len(self.draws), figsize=(6 * len(self.draws), 4), squeeze=False)
        for axis, draw in zip(axes[0], self.draws):
            draw(axis)
            axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(out_dir / self.file, dpi=100)
        plt.close(figure)


@dataclass
class Plot:
    """file: a 6 x 4 inch, 100 dpi PNG of one grid-lined axis on which draw(axis) draws (Panels of one panel)."""
    file: str
    draw: Callable

    def save(self, out_dir: Path) -> None:
        Panels(self.file, [self.draw]).save(out_dir)


@dataclass
class CkaMaps:
    """file: one heat map per run of its CKA matrix, on a shared 0..1 colour bar. matrices: run name ->
    {"cka": n x n nested lists}."""
    file: str
    matrices: dict

    def save(self, out_dir: Path) -> None:
        plt = pyplot()
        figure, axes = plt.subplots(1, len(self.matrices), figsize=(4.5 * len(self.matrices), 4))
        for axis, (name, entry) in zip(axes, self.matrices.items()):
            image = axis.imshow(entry["cka"], vmin=0, vmax=1, cmap="magma")
            axis.set(title=name, xlabel="application", ylabel="application")
        figure.colorbar(image, ax=list(axes), shrink=0.8)
        figure.savefig(out_dir / self.file, dpi=100)
        plt.close(figure)


def draw_bars(axis, labels: list[str], per_seed: list[list[float]], colors=None) -> None:
    """Bars of the mean over seeds with the sample std as error bars."""
    means, stds = zip(*(mean_std(values) for values in per_seed))
    axis.bar(range(len(labels)), means, yerr=stds, capsize=4, color=colors)
    axis.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)


def draw_accuracy_curves(axis, results: dict, curves: dict[str, list[str]], x: str) -> None:
    """Final test accuracy against the config field x: one line per curve (label -> the names of its runs) through
    each run's mean over seeds, with the sample std as error bars."""
    for label, names in curves.items():
        xs = [results[name][0]["config"][x] for name in names]
        means, stds = zip(*(mean_std(final_accuracies(results, name)) for name in names))
        axis.errorbar(xs, means, yerr=stds, fmt="o-", capsize=4, label=label)
    axis.legend()


def draw_metric_curves(axis, results: dict, names: list[str], key: str,
                       start: dict[str, list[float]] | None = None) -> None:
    """A per-epoch metric against the epoch: one line per run through its mean over seeds, with the sample std as
    error bars. start: run name -> its per-seed values before training, drawn at epoch 0 where given."""
    for name in names:
        seeds = results[name]
        epochs = [m["epoch"] for m in seeds[0]["metrics"]]
        means, stds = zip(*(mean_std([metric_curve(r, key)[index] for r in seeds]) for index in range(len(epochs))))
        if start is not None and name in start:
            first_mean, first_std = mean_std(start[name])
            epochs, means, stds = [0, *epochs], [first_mean, *means], [first_std, *stds]
        axis.errorbar(epochs, means, yerr=stds, fmt="o-", capsize=4, label=name)
    from matplotlib.ticker import MaxNLocator  # imported on first use, as pyplot() is

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
