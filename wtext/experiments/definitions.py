"""The paper's experiments as sweeps. Each experiment turns a scale into runs, trains them (wtext.experiments.sweep)
and reports: results.md (a table and the claim it checks), a PNG plot and results.json (raw metrics of every run).

Scales: "quick" runs on a 2-core CPU within minutes on the embedded synthetic data (the tests use it); "paper"
uses the paper-sized presets on CIFAR-10 or ImageNet32 from --data-dir and wants a GPU.
"""

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from wtext.analysis import cka_matrix
from wtext.data import DeviceLoader, load_dataset
from wtext.train.checkpoint import load_checkpoint
from wtext.train.model_builder import model_for
from wtext.train import TrainConfig

from .sweep import Sweep, markdown_table

SCALES = {
    "quick": dict(dataset="synthetic", synthetic_train=3072, synthetic_test=1024, epochs=4, batch_size=32, lr=3e-3,
                  model="resnet-tiny", width=8, depth=3, progress=False),
    "paper": dict(dataset="cifar10", epochs=100, batch_size=128, model="resnet-small", progress=True),
}
VIT = {"quick": dict(model="vit-tiny", width=None, depth=3), "paper": dict(model="vit-small", width=None)}
LARGE = {"quick": {}, "paper": dict(model="resnet-large")}


@dataclass
class Experiment:
    name: str
    claim: str
    run: Callable[[Path, str, Sweep], str]  # (out_dir, scale, sweep) -> markdown body


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(name: str, claim: str):
    def register(function):
        EXPERIMENTS[name] = Experiment(name, claim, function)
        return function

    return register


def best(result: dict) -> float:
    return result["summary"]["best_test_accuracy"]


def plot(path: Path, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    draw(axis)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_raw(out_dir: Path, results: dict) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")


@experiment("masks", "Multi-mask weight-tied > same-mask > dense weight-tied, at equal stored parameters.")
def masks_experiment(out_dir, scale, sweep):
    runs = {f"resnet-{mode}": {"mask_mode": mode} for mode in ("dense", "same", "multi")}
    runs.update({f"vit-{mode}": {**VIT[scale], "mask_mode": mode} for mode in ("dense", "same", "multi")})
    results = sweep.run(runs)
    save_raw(out_dir, results)
    rows = [[name, r["summary"]["parameters"], round(r["summary"]["effective_parameters"]), best(r),
             r["summary"]["final_test_accuracy"]] for name, r in results.items()]

    def draw(axis):
        names = list(results)
        axis.bar(names, [best(results[n]) for n in names], color=["#999", "#69c", "#c63"] * 2)
        axis.set(ylabel="best test accuracy", title="mask modes at equal stored parameters")
        axis.tick_params(axis="x", rotation=30)

    plot(out_dir / "masks.png", draw)
    return markdown_table(["run", "stored params", "effective params / application", "best acc", "final acc"], rows)


DENSITIES = {"quick": [0.1, 0.5, 0.9], "paper": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}


@experiment("density", "Density ~0.5 suits ResNet-like and ~0.9 Transformer-like multi-mask models.")
def density_experiment(out_dir, scale, sweep):
    runs = {}
    for density in DENSITIES[scale]:
        runs[f"resnet-d{density}"] = {"density": density}
        runs[f"vit-d{density}"] = {**VIT[scale], "density": density}
    results = sweep.run(runs)
    save_raw(out_dir, results)
    rows = [[name, r["config"]["density"], round(r["summary"]["effective_parameters"]), best(r)]
            for name, r in results.items()]

    def draw(axis):
        for family in ("resnet", "vit"):
            points = [(r["config"]["density"], best(r)) for n, r in results.items() if n.startswith(family)]
            axis.plot(*zip(*points), "o-", label=family)
        axis.set(xlabel="mask density", ylabel="best test accuracy", title="accuracy vs density")
        axis.legend()

    plot(out_dir / "density.png", draw)
    return markdown_table(["run", "density", "effective params / application", "best acc"], rows)


GRID = {"quick": ([8, 16], [1, 2, 4]), "paper": ([32, 64, 128], [2, 4, 6, 12])}


@experiment("width-depth", "Width matters more than depth: a 2-deep model 2x wider beats a 12-deep one.")
def width_depth_experiment(out_dir, scale, sweep):
    widths, depths = GRID[scale]
    runs = {f"w{w}-d{d}": {"width": w, "depth": d} for w in widths for d in depths}
    results = sweep.run(runs)
    save_raw(out_dir, results)
    rows = [[name, r["config"]["width"], r["config"]["depth"], r["summary"]["parameters"],
             round(r["summary"]["flops_per_image"]), best(r)] for name, r in results.items()]

    def draw(axis):
        for width in widths:
            points = [(r["config"]["depth"], best(r)) for r in results.values() if r["config"]["width"] == width]
            axis.plot(*zip(*points), "o-", label=f"width {width}")
        axis.set(xlabel="depth (tied applications)", ylabel="best test accuracy", title="width vs depth")
        axis.legend()

    plot(out_dir / "width_depth.png", draw)
    note = ("Compare rows of equal parameters (width fixes the stored parameters; depth only adds compute) or of "
            "equal FLOPs per image.\n\n")
    return note + markdown_table(["run", "width", "depth", "stored params", "effective FLOPs / image", "best acc"],
                                 rows)


DEQ_RUNS = ("implicit", "phantom", "one_step", "implicit_jr")


@experiment("deq", "Weight-tied multi-mask models beat DEQ variants in accuracy and run over 3x faster.")
def deq_experiment(out_dir, scale, sweep):
    runs = {"weight-tied-multi": {"mask_mode": "multi"}}
    runs.update({f"deq-{variant}": {"deq": variant, "mask_mode": "same"} for variant in DEQ_RUNS})
    results = sweep.run(runs)
    save_raw(out_dir, results)
    rows = []
    for name, r in results.items():
        metrics = r["metrics"]
        epoch_time = sum(m["time_s"] for m in metrics) / len(metrics)
        inference = metrics[-1].get("eval_time_s", float("nan"))
        steps = metrics[-1].get("solver_steps", float("nan"))
        rows.append([name, best(r), epoch_time, inference, steps])
    reference = rows[0][2]

    def draw(axis):
        axis.scatter([row[2] for row in rows], [row[1] for row in rows])
        for row in rows:
            axis.annotate(row[0], (row[2], row[1]), fontsize=8)
        axis.set(xlabel="training time per epoch (s)", ylabel="best test accuracy", title="weight-tied vs DEQ")

    plot(out_dir / "deq.png", draw)
    rows = [row + [row[2] / reference] for row in rows]
    return markdown_table(["run", "best acc", "train s / epoch", "inference s (test set)", "solver steps",
                           "train time vs weight-tied"], rows)


@experiment("cka", "Diverse masks lower the layer-wise similarity (CKA) of tied applications.")
def cka_experiment(out_dir, scale, sweep):
    runs = {f"resnet-{mode}": {"mask_mode": mode} for mode in ("dense", "same", "multi")}
    results = sweep.run(runs)
    matrices = {}
    for name, r in results.items():
        config = TrainConfig(**{**r["config"], "progress": False})
        data = load_dataset(config.dataset, config.data_dir, synthetic_train=config.synthetic_train,
                            synthetic_test=config.synthetic_test, seed=config.seed)
        model = model_for(config, data.num_classes)
        state = load_checkpoint(Path(config.run_dir) / "checkpoint.pt")
        model.load_state_dict(state["model"])
        loader = DeviceLoader(data.test, 128, data.mean, data.std, train=False)
        sweep.log(f"CKA of {name} on {len(data.test)} test images")
        names, matrix = cka_matrix(model, loader.epoch(0), max_batches=20)
        matrices[name] = {"names": names, "cka": matrix.tolist()}
    (out_dir / "cka_matrices.json").write_text(json.dumps(matrices, indent=1) + "\n")
    save_raw(out_dir, results)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(matrices), figsize=(4.5 * len(matrices), 4))
    for axis, (name, entry) in zip(axes, matrices.items()):
        image = axis.imshow(entry["cka"], vmin=0, vmax=1, cmap="magma")
        axis.set(title=name, xlabel="application", ylabel="application")
    figure.colorbar(image, ax=list(axes), shrink=0.8)
    figure.savefig(out_dir / "cka.png", dpi=100)
    plt.close(figure)
    rows = []
    for name, entry in matrices.items():
        matrix = torch.tensor(entry["cka"])
        count = matrix.shape[0]
        off_diagonal = (matrix.sum() - matrix.diagonal().sum()) / (count * count - count)
        rows.append([name, count, off_diagonal.item(), best(results[name])])
    return markdown_table(["run", "representations", "mean off-diagonal CKA", "best acc"], rows)


QUALITY_MODELS = {"quick": ("resnet-tiny", "vit-tiny", "cnn-reference"),
                  "paper": ("resnet-small", "vit-small", "cnn-reference")}
QUALITY_DATASETS = {"quick": ("digits", "synthetic"), "paper": ("digits", "synthetic")}
QUALITY_SEEDS = 3
# The default main job's budget (python -m wtext.train): its epochs, batch size and learning rate.
QUALITY_BUDGET = dict(epochs=6, batch_size=64, lr=1e-3, width=None, depth=None)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@experiment("quality", "The tied models learn as well as a plain CNN trained the same way (same epochs, optimizer, "
                       "seeds).")
def quality_experiment(out_dir, scale, sweep):
    runs = {f"{dataset}-{model}-s{seed}": {**QUALITY_BUDGET, "dataset": dataset, "model": model, "seed": seed}
            for dataset in QUALITY_DATASETS[scale] for model in QUALITY_MODELS[scale] for seed in range(QUALITY_SEEDS)}
    results = sweep.run(runs)
    save_raw(out_dir, results)
    final = {name: r["summary"]["final_test_accuracy"] for name, r in results.items()}
    rows, bars = [], []
    for dataset in QUALITY_DATASETS[scale]:
        reference = [final[f"{dataset}-cnn-reference-s{seed}"] for seed in range(QUALITY_SEEDS)]
        for model in QUALITY_MODELS[scale]:
            accuracies = [final[f"{dataset}-{model}-s{seed}"] for seed in range(QUALITY_SEEDS)]
            mean, spread = mean_std(accuracies)
            gap_mean, gap_spread = mean_std([a - b for a, b in zip(accuracies, reference)])  # paired by seed
            parameters = results[f"{dataset}-{model}-s0"]["summary"]["parameters"]
            rows.append([dataset, model, parameters, f"{mean:.4f} ± {spread:.4f}",
                         f"{min(accuracies):.4f} .. {max(accuracies):.4f}",
                         "—" if model == "cnn-reference" else f"{gap_mean:+.4f} ± {gap_spread:.4f}"])
            bars.append((f"{dataset}\n{model}", mean, spread))

    def draw(axis):
        axis.bar(range(len(bars)), [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=4,
                 color=["#c63", "#69c", "#999"] * len(QUALITY_DATASETS[scale]))
        axis.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
        axis.set(ylabel="final test accuracy", title="tied models against the plain CNN")

    plot(out_dir / "quality.png", draw)
    budget = ", ".join(f"{k} {v}" for k, v in QUALITY_BUDGET.items() if v is not None)
    note = (f"Each cell: final test accuracy over {QUALITY_SEEDS} seeds (mean ± sample std, then min .. max), "
            f"{budget}, Adam, the default augmentation. The last column is the paired difference to the plain CNN "
            f"of the same seed (mean ± std over seeds).\n\n")
    return note + markdown_table(["data", "model", "stored params", "final acc", "range", "vs plain CNN"], rows)
