"""The paper's experiments as sweeps. Each experiment turns a scale into runs, trains them (wtext.experiments.sweep)
and reports: results.md (a table and the claim it checks), a PNG plot and results.json (raw metrics of every run).

Scales: "quick" runs on a 2-core CPU within minutes on the embedded synthetic data (the tests use it); "paper"
uses the paper-sized presets on CIFAR-10 or ImageNet32 from --data-dir and wants a GPU.
"""

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from wtext.analysis import cka_matrix
from wtext.data import DeviceLoader, load_dataset
from wtext.nn.mask_overlap import consecutive_hamming
from wtext.nn.tied_weight import TiedMaskedWeight
from wtext.train.checkpoint import load_checkpoint
from wtext.train.model_builder import model_for
from wtext.train import TrainConfig

from .statistics import (COMPARISON_HEADER, CORRELATION_HEADER, Comparison, compare, comparison_row, correlate,
                         correlation_row, mean_std)
from .sweep import Sweep, markdown_table, run_dir_of

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


def final_accuracies(results: dict, name: str) -> list[float]:
    """The run's final test accuracy per seed (the last epoch's: nothing is selected on the test set)."""
    return [r["summary"]["final_test_accuracy"] for r in results[name]]


def best_accuracies(results: dict, name: str) -> list[float]:
    return [r["summary"]["best_test_accuracy"] for r in results[name]]


def spread(values: list[float], digits: int = 4) -> str:
    """'mean ± std' of per-seed values ('—' for a metric the run does not have, e.g. a weight-tied run's solver
    steps)."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def verdicts(comparisons: list[Comparison]) -> str:
    """The comparison table: each claim's paired difference over seeds, its 95% interval and the verdict."""
    explanation = ("Each row tests a claim \"A − B > 0\" on the per-seed differences of runs that share their seed "
                   "(data order, initialization, masks): mean ± sample std, the 95% t-interval of the mean, and the "
                   "verdict: supported when the interval lies above 0, contradicted when below, else inconclusive. "
                   "With one seed there is no interval and every verdict is inconclusive.\n\n")
    return "## Verdicts\n\n" + explanation + markdown_table(COMPARISON_HEADER, [comparison_row(c) for c in comparisons])


def save_raw(out_dir: Path, results: dict, comparisons: list[Comparison] = (), extra: dict | None = None) -> None:
    """results.json: every seed's summary, metrics and config per run, and the comparisons."""
    payload = {"runs": results, "comparisons": [c.as_dict() for c in comparisons], **(extra or {})}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=1) + "\n")


def draw_bars(axis, labels: list[str], per_seed: list[list[float]], colors=None) -> None:
    """Bars of the mean over seeds with the sample std as error bars."""
    means, stds = zip(*(mean_std(values) for values in per_seed))
    axis.bar(range(len(labels)), means, yerr=stds, capsize=4, color=colors)
    axis.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)


def seeds_note(results: dict) -> str:
    seeds = sorted({r["seed"] for runs in results.values() for r in runs})
    return (f"Seeds {', '.join(map(str, seeds))}: each cell is the mean ± sample std over them; final acc is the "
            f"last epoch's test accuracy, best acc the best epoch's.\n\n")


MASK_MODES = ("dense", "same", "multi")


@experiment("masks", "Multi-mask weight-tied > same-mask > dense weight-tied, at equal stored parameters.")
def masks_experiment(out_dir, scale, sweep):
    runs = {f"resnet-{mode}": {"mask_mode": mode} for mode in MASK_MODES}
    runs.update({f"vit-{mode}": {**VIT[scale], "mask_mode": mode} for mode in MASK_MODES})
    results = sweep.run(runs)
    rows = [[name, r[0]["summary"]["parameters"], round(r[0]["summary"]["effective_parameters"]),
             spread(final_accuracies(results, name)), spread(best_accuracies(results, name))]
            for name, r in results.items()]
    comparisons = [compare(f"{family}: multi − {other}", final_accuracies(results, f"{family}-multi"),
                           final_accuracies(results, f"{family}-{other}"))
                   for family in ("resnet", "vit") for other in ("same", "dense")]
    comparisons += [compare(f"{family}: same − dense", final_accuracies(results, f"{family}-same"),
                            final_accuracies(results, f"{family}-dense")) for family in ("resnet", "vit")]
    save_raw(out_dir, results, comparisons)

    def draw(axis):
        names = list(results)
        draw_bars(axis, names, [final_accuracies(results, n) for n in names], ["#999", "#69c", "#c63"] * 2)
        axis.set(ylabel="final test accuracy", title="mask modes at equal stored parameters")

    plot(out_dir / "masks.png", draw)
    return (seeds_note(results) + markdown_table(["run", "stored params", "effective params / application",
                                                  "final acc", "best acc"], rows) + "\n\n" + verdicts(comparisons))


DENSITIES = {"quick": [0.1, 0.5, 0.9], "paper": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}
BEST_DENSITY = {"resnet": 0.5, "vit": 0.9}  # the paper's densities


@experiment("density", "Density ~0.5 suits ResNet-like and ~0.9 Transformer-like multi-mask models.")
def density_experiment(out_dir, scale, sweep):
    runs = {}
    for density in DENSITIES[scale]:
        runs[f"resnet-d{density}"] = {"density": density}
        runs[f"vit-d{density}"] = {**VIT[scale], "density": density}
    results = sweep.run(runs)
    rows = [[name, r[0]["config"]["density"], round(r[0]["summary"]["effective_parameters"]),
             spread(final_accuracies(results, name))] for name, r in results.items()]
    comparisons = []
    for family, claimed in BEST_DENSITY.items():
        others = [d for d in DENSITIES[scale] if d != claimed]
        # Against the strongest rival: the other density with the highest mean final accuracy.
        rival = max(others, key=lambda d: mean_std(final_accuracies(results, f"{family}-d{d}"))[0])
        comparisons.append(compare(f"{family}: density {claimed} − best other ({rival})",
                                   final_accuracies(results, f"{family}-d{claimed}"),
                                   final_accuracies(results, f"{family}-d{rival}")))
    save_raw(out_dir, results, comparisons)

    def draw(axis):
        for family in ("resnet", "vit"):
            names = [n for n in results if n.startswith(family)]
            densities = [results[n][0]["config"]["density"] for n in names]
            means, stds = zip(*(mean_std(final_accuracies(results, n)) for n in names))
            axis.errorbar(densities, means, yerr=stds, fmt="o-", capsize=4, label=family)
        axis.set(xlabel="mask density", ylabel="final test accuracy", title="accuracy vs density")
        axis.legend()

    plot(out_dir / "density.png", draw)
    return (seeds_note(results) + markdown_table(["run", "density", "effective params / application", "final acc"],
                                                 rows) + "\n\n" + verdicts(comparisons))


GRID = {"quick": ([8, 16], [1, 2, 4]), "paper": ([32, 64, 128], [2, 4, 6, 12])}
PAPER_DEPTHS = (2, 12)  # the paper's case: depth 2 at width 2w against depth 12 at width w


def width_depth_runs(widths: list[int], depths: list[int]) -> dict[str, dict]:
    """The grid, plus the narrow-deep run of the paper's case (width w, depth 12) for every w whose double is in
    the grid."""
    shallow, deep = PAPER_DEPTHS
    pairs = {(w, d) for w in widths for d in depths}
    pairs |= {(w, deep) for w in widths if 2 * w in widths}
    return {f"w{w}-d{d}": {"width": w, "depth": d} for w, d in sorted(pairs)}


@experiment("width-depth", "Width matters more than depth: a 2-deep model 2x wider beats a 12-deep one.")
def width_depth_experiment(out_dir, scale, sweep):
    widths, depths = GRID[scale]
    results = sweep.run(width_depth_runs(widths, depths))
    rows = [[name, r[0]["config"]["width"], r[0]["config"]["depth"], r[0]["summary"]["parameters"],
             round(r[0]["summary"]["flops_per_image"]), spread(final_accuracies(results, name))]
            for name, r in results.items()]
    shallow, deep = PAPER_DEPTHS
    comparisons = [compare(f"paper's case: w{2 * w}-d{shallow} − w{w}-d{deep}",
                           final_accuracies(results, f"w{2 * w}-d{shallow}"),
                           final_accuracies(results, f"w{w}-d{deep}"))
                   for w in widths if f"w{2 * w}-d{shallow}" in results and f"w{w}-d{deep}" in results]
    # Equal FLOPs per image: a conv's cost grows with width squared, so width 2w at depth d costs what width w does
    # at depth 4d (the stored parameters of the wider one are ~4x).
    comparisons += [compare(f"equal FLOPs: w{2 * w}-d{d} − w{w}-d{4 * d}", final_accuracies(results, f"w{2 * w}-d{d}"),
                            final_accuracies(results, f"w{w}-d{4 * d}"))
                    for w in widths for d in depths if f"w{2 * w}-d{d}" in results and f"w{w}-d{4 * d}" in results]
    save_raw(out_dir, results, comparisons)

    def draw(axis):
        for width in widths:
            names = [n for n, r in results.items() if r[0]["config"]["width"] == width]
            depth_values = [results[n][0]["config"]["depth"] for n in names]
            means, stds = zip(*(mean_std(final_accuracies(results, n)) for n in names))
            axis.errorbar(depth_values, means, yerr=stds, fmt="o-", capsize=4, label=f"width {width}")
        axis.set(xlabel="depth (tied applications)", ylabel="final test accuracy", title="width vs depth")
        axis.legend()

    plot(out_dir / "width_depth.png", draw)
    note = ("Compare rows of equal parameters (width fixes the stored parameters; depth only adds compute) or of "
            "equal FLOPs per image.\n\n")
    return (seeds_note(results) + note + markdown_table(["run", "width", "depth", "stored params",
                                                         "effective FLOPs / image", "final acc"], rows)
            + "\n\n" + verdicts(comparisons))


DEQ_RUNS = ("implicit", "phantom", "one_step", "implicit_jr")
DEQ_SPEEDUP = 3.0  # the paper: weight-tied models train over 3x faster than DEQs
# The DEQ runs test convergence every few solver iterations and stop once every sample converged, so their time is
# not inflated by iterations after convergence. On a CPU a test costs ~1 us against ~6 ms per iteration (any k is
# free); on a GPU each test is a synchronization, and every second iteration halves them at the price of at most
# one iteration per solve (benchmarks/NOTES.md, "DEQ early end").
DEQ_CHECK_EVERY = 2


def epoch_seconds(result: dict) -> float:
    return statistics.mean(m["time_s"] for m in result["metrics"])


def mean_metric(result: dict, key: str) -> float:
    values = [m[key] for m in result["metrics"] if key in m]
    return statistics.mean(values) if values else float("nan")


@experiment("deq", "Weight-tied multi-mask models beat DEQ variants in accuracy and run over 3x faster.")
def deq_experiment(out_dir, scale, sweep):
    if sweep.fuse:
        # Fused members share their group's time: the weight-tied runs would look faster than they train alone.
        raise ValueError("the deq experiment compares training times; --fuse would split the weight-tied runs' time "
                         "across a fused group: run it without --fuse")
    runs = {"weight-tied-multi": {"mask_mode": "multi"}}
    runs.update({f"deq-{variant}": {"deq": variant, "mask_mode": "same", "deq_check_every": DEQ_CHECK_EVERY}
                 for variant in DEQ_RUNS})
    results = sweep.run(runs)
    reference = "weight-tied-multi"
    reference_times = [epoch_seconds(r) for r in results[reference]]
    rows, comparisons = [], []
    for name, seeds in results.items():
        times = [epoch_seconds(r) for r in seeds]
        ratios = [t / t_ref for t, t_ref in zip(times, reference_times)]
        rows.append([name, spread(final_accuracies(results, name)), spread(times, 2),
                     spread([r["metrics"][-1]["eval_time_s"] for r in seeds], 3),
                     spread([mean_metric(r, "solver_steps") for r in seeds], 1),
                     spread([mean_metric(r, "backward_solver_steps") for r in seeds], 1), spread(ratios, 2)])
        if name != reference:
            comparisons.append(compare(f"accuracy: weight-tied − {name}", final_accuracies(results, reference),
                                       final_accuracies(results, name)))
            comparisons.append(compare(f"train time: {name} / weight-tied − {DEQ_SPEEDUP:g}", ratios,
                                       [DEQ_SPEEDUP] * len(ratios)))
    save_raw(out_dir, results, comparisons)

    def draw(axis):
        for name, seeds in results.items():
            times = [epoch_seconds(r) for r in seeds]
            accuracy = final_accuracies(results, name)
            axis.errorbar(mean_std(times)[0], mean_std(accuracy)[0], xerr=mean_std(times)[1],
                          yerr=mean_std(accuracy)[1], fmt="o", capsize=4)
            axis.annotate(name, (mean_std(times)[0], mean_std(accuracy)[0]), fontsize=8)
        axis.set(xlabel="training time per epoch (s)", ylabel="final test accuracy", title="weight-tied vs DEQ")

    plot(out_dir / "deq.png", draw)
    note = (f"DEQ solves test convergence every {DEQ_CHECK_EVERY} iterations and end once every sample stopped "
            f"(--deq-check-every), so no run pays for iterations after convergence. Solver steps: the mean over "
            f"samples of the iterations each sample took until it converged, diverged or hit the budget, in the "
            f"forward solve and in the implicit backward's adjoint solve (— where a run has none).\n\n")
    return (seeds_note(results) + note
            + markdown_table(["run", "final acc", "train s / epoch", "inference s (test set)", "solver steps fwd",
                              "solver steps bwd", "train time vs weight-tied"], rows)
            + "\n\n" + verdicts(comparisons))


def off_diagonal_mean(matrix: torch.Tensor) -> float:
    count = matrix.shape[0]
    return ((matrix.sum() - matrix.diagonal().sum()) / (count * count - count)).item()


def trained_run(result: dict, datasets: dict):
    """(config, model with the run's trained weights, data) of a finished run. datasets: a cache shared by the runs
    of an experiment, so each distinct data set is loaded once (the seed and sizes matter for the synthetic set
    only)."""
    config = TrainConfig(**{**result["config"], "progress": False})
    key = (config.dataset, config.data_dir)
    if config.dataset == "synthetic":
        key += (config.seed, config.synthetic_train, config.synthetic_test)
    if key not in datasets:
        datasets[key] = load_dataset(config.dataset, config.data_dir, synthetic_train=config.synthetic_train,
                                     synthetic_test=config.synthetic_test, seed=config.seed)
    data = datasets[key]
    model = model_for(config, data.num_classes)
    model.load_state_dict(load_checkpoint(Path(config.run_dir) / "checkpoint.pt")["model"])
    return config, model, data


def cka_of_run(result: dict, log, datasets: dict) -> tuple[list[str], torch.Tensor]:
    """Minibatch linear CKA between every pair of tied applications of a trained run (its checkpoint)."""
    config, model, data = trained_run(result, datasets)
    return cka_of_model(model, data, config, log)


def cka_of_model(model, data, config: TrainConfig, log) -> tuple[list[str], torch.Tensor]:
    loader = DeviceLoader(data.test, 128, data.mean, data.std, train=False)
    log(f"CKA of {config.run_dir} on {len(data.test)} test images")
    return cka_matrix(model, loader.epoch(0), max_batches=20)


def draw_cka_maps(path: Path, matrices: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(matrices), figsize=(4.5 * len(matrices), 4))
    for axis, (name, entry) in zip(axes, matrices.items()):
        image = axis.imshow(entry["cka"], vmin=0, vmax=1, cmap="magma")
        axis.set(title=name, xlabel="application", ylabel="application")
    figure.colorbar(image, ax=list(axes), shrink=0.8)
    figure.savefig(path, dpi=100)
    plt.close(figure)


@experiment("cka", "Diverse masks lower the layer-wise similarity (CKA) of tied applications.")
def cka_experiment(out_dir, scale, sweep):
    datasets = {}
    runs = {f"resnet-{mode}": {"mask_mode": mode} for mode in MASK_MODES}
    results = sweep.run(runs)
    matrices, off_diagonal = {}, {}
    for name, seeds in results.items():
        per_seed = [cka_of_run(r, sweep.log, datasets) for r in seeds]
        names = per_seed[0][0]
        # The heat map shows seed 0; the table and the verdicts use every seed.
        matrices[name] = {"names": names, "cka": per_seed[0][1].tolist(),
                          "cka_per_seed": [matrix.tolist() for _, matrix in per_seed]}
        off_diagonal[name] = [off_diagonal_mean(matrix) for _, matrix in per_seed]
    (out_dir / "cka_matrices.json").write_text(json.dumps(matrices, indent=1) + "\n")
    comparisons = [compare(f"CKA: {other} − multi", off_diagonal[f"resnet-{other}"], off_diagonal["resnet-multi"])
                   for other in ("same", "dense")]
    save_raw(out_dir, results, comparisons, {"off_diagonal_cka": off_diagonal})
    draw_cka_maps(out_dir / "cka.png", matrices)
    rows = [[name, len(matrices[name]["names"]), spread(off_diagonal[name]), spread(final_accuracies(results, name))]
            for name in results]
    return (seeds_note(results) + markdown_table(["run", "representations", "mean off-diagonal CKA", "final acc"], rows)
            + "\n\n" + verdicts(comparisons))


QUALITY_MODELS = {"quick": ("resnet-tiny", "vit-tiny", "cnn-reference"),
                  "paper": ("resnet-small", "vit-small", "cnn-reference")}
QUALITY_DATASETS = {"quick": ("digits", "synthetic"), "paper": ("digits", "synthetic")}
# The default main job's budget (python -m wtext.train): its epochs, batch size and learning rate.
QUALITY_BUDGET = dict(epochs=6, batch_size=64, lr=1e-3, width=None, depth=None)
QUALITY_MARGIN = 0.02  # "learns about as well": within 2 points of the plain CNN


@experiment("quality", "The tied models learn as well as a plain CNN trained the same way (same epochs, optimizer, "
                       "seeds).")
def quality_experiment(out_dir, scale, sweep):
    runs = {f"{dataset}-{model}": {**QUALITY_BUDGET, "dataset": dataset, "model": model}
            for dataset in QUALITY_DATASETS[scale] for model in QUALITY_MODELS[scale]}
    results = sweep.run(runs)
    rows, bars, comparisons = [], [], []
    for dataset in QUALITY_DATASETS[scale]:
        reference = final_accuracies(results, f"{dataset}-cnn-reference")
        for model in QUALITY_MODELS[scale]:
            accuracies = final_accuracies(results, f"{dataset}-{model}")
            rows.append([dataset, model, results[f"{dataset}-{model}"][0]["summary"]["parameters"],
                         spread(accuracies), f"{min(accuracies):.4f} .. {max(accuracies):.4f}"])
            bars.append((f"{dataset}\n{model}", accuracies))
            if model != "cnn-reference":
                # "As well as" within a margin: A − CNN > −margin, i.e. (A + margin) − CNN > 0.
                comparisons.append(compare(f"{dataset}: {model} + {QUALITY_MARGIN:g} − cnn-reference",
                                           [a + QUALITY_MARGIN for a in accuracies], reference))
    save_raw(out_dir, results, comparisons)

    def draw(axis):
        draw_bars(axis, [b[0] for b in bars], [b[1] for b in bars],
                  ["#c63", "#69c", "#999"] * len(QUALITY_DATASETS[scale]))
        axis.set(ylabel="final test accuracy", title="tied models against the plain CNN")

    plot(out_dir / "quality.png", draw)
    trained = next(iter(results.values()))[0]["config"]  # the budget as run (the command line may change it)
    budget = ", ".join(f"{k} {trained[k]}" for k in ("epochs", "batch_size", "lr"))
    note = (f"Budget: {budget}, Adam, the default augmentation. A claim row passes when the tied model is within "
            f"{QUALITY_MARGIN:g} of the plain CNN of the same seed.\n\n")
    return (seeds_note(results) + note
            + markdown_table(["data", "model", "stored params", "final acc", "range"], rows)
            + "\n\n" + verdicts(comparisons))


OVERLAPS = {"quick": [0.0, 0.5, 0.9, 1.0], "paper": [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0]}


def mask_hamming(model, config: TrainConfig) -> float:
    """Measured mean fraction of weights whose mask differs between consecutive applications, over the model's tied
    weights (masks regenerated from the run's spec)."""
    tied = [module for module in model.modules() if isinstance(module, TiedMaskedWeight)]
    if not tied:
        raise ValueError(f"mask-overlap needs a model with tied weights; {config.model} has none (drop --model)")
    return statistics.mean(consecutive_hamming(module.application_masks()) for module in tied)


@experiment("mask-overlap", "More diverse masks (less overlap between consecutive applications) lower the "
                            "layer-wise CKA and raise accuracy.")
def mask_overlap_experiment(out_dir, scale, sweep):
    datasets = {}
    runs = {f"overlap-{overlap}": {"mask_mode": "multi", "pattern": "bernoulli", "mask_overlap": overlap}
            for overlap in OVERLAPS[scale]}
    results = sweep.run(runs)
    points = []  # (hamming, cka, accuracy) per (run, seed)
    per_run = {}
    for name, seeds in results.items():
        trained = [trained_run(r, datasets) for r in seeds]  # each run's model built once for both measures
        hamming = [mask_hamming(model, config) for config, model, _ in trained]
        cka = [off_diagonal_mean(cka_of_model(model, data, config, sweep.log)[1]) for config, model, data in trained]
        accuracy = final_accuracies(results, name)
        per_run[name] = {"hamming": hamming, "cka": cka, "accuracy": accuracy}
        points += list(zip(hamming, cka, accuracy))
    hamming_values, cka_values, accuracy_values = (list(column) for column in zip(*points))
    correlations = [correlate("accuracy rises with mask Hamming distance", hamming_values, accuracy_values, +1),
                    correlate("CKA falls with mask Hamming distance", hamming_values, cka_values, -1)]
    lowest, highest = f"overlap-{min(OVERLAPS[scale])}", f"overlap-{max(OVERLAPS[scale])}"
    comparisons = [compare(f"accuracy: {lowest} − {highest}", per_run[lowest]["accuracy"],
                           per_run[highest]["accuracy"]),
                   compare(f"CKA: {highest} − {lowest}", per_run[highest]["cka"], per_run[lowest]["cka"])]
    save_raw(out_dir, results, comparisons, {"per_run": per_run,
                                             "correlations": [c.as_dict() for c in correlations]})

    def draw(axis):
        for name, values in per_run.items():
            axis.scatter(values["hamming"], values["accuracy"], label=name)
        axis.set(xlabel="mask Hamming distance between consecutive applications", ylabel="final test accuracy",
                 title="accuracy vs mask diversity")
        axis.legend(fontsize=7)

    plot(out_dir / "mask_overlap.png", draw)
    rows = [[results[name][0]["config"]["mask_overlap"], spread(values["hamming"]), spread(values["cka"]),
             spread(values["accuracy"])] for name, values in per_run.items()]
    note = ("Overlap: the fraction of each application's mask carried over from the previous application's "
            "(docs/masks.md); 0 is plain multi-mask, 1 the same mask everywhere. Hamming distance is measured on "
            "the runs' masks; CKA is the mean off-diagonal minibatch linear CKA between applications on the test "
            "set.\n\n")
    correlation_table = markdown_table(CORRELATION_HEADER, [correlation_row(c) for c in correlations])
    return (seeds_note(results) + note
            + markdown_table(["overlap", "mask Hamming distance", "mean off-diagonal CKA", "final acc"], rows)
            + "\n\n" + verdicts(comparisons) + "\n\nCorrelations over every (run, seed):\n\n" + correlation_table)


# LoRA transfer: the rank r of the LoRA arms and the masked copies d of the multi-mask ones, per scale.
LORA_SHAPE = {"quick": (4, 2), "paper": (8, 2)}
LORA_DENSITY = 0.5
# The transfer target at both scales: digits has 10 classes like the synthetic set and CIFAR-10 (the head is
# carried over and trained); from ImageNet32's 1000 classes the head starts fresh (--init-from keeps a head of
# another shape freshly initialized).
LORA_TARGET = "digits"
HEAD_MODULE = "head"  # the classifier head of wtext's models (nn.Linear)


def lora_arms(rank: int, copies: int, init_from) -> dict[str, dict]:
    """The transfer arms: options of each run; init_from is a function of the seed (the pretraining run's)."""
    transfer = {"dataset": LORA_TARGET, "init_from": init_from}
    arms = {"head-only": {**transfer, "train_only": HEAD_MODULE}, "full": dict(transfer)}
    lora = {f"lora-r{rank}": f"r={rank},copies=1,density=1",
            f"lora-r{copies * rank}": f"r={copies * rank},copies=1,density=1",
            f"same-{copies}x-r{rank}": f"r={rank},copies={copies},density={LORA_DENSITY},mode=same",
            f"multi-{copies}x-r{rank}": f"r={rank},copies={copies},density={LORA_DENSITY},mode=multi"}
    arms.update({name: {**transfer, "lora": text, "train_only": HEAD_MODULE} for name, text in lora.items()})
    return arms


@experiment("lora", "Multi-mask LoRA transfers better than same-mask and single LoRA at equal trainable parameters.")
def lora_experiment(out_dir, scale, sweep):
    rank, copies = LORA_SHAPE[scale]

    def pretrained(seed: int) -> str:  # each seed's transfer runs start from the pretraining run of that seed
        return str(run_dir_of(out_dir, "pretrain", seed) / "checkpoint.pt")

    arms = lora_arms(rank, copies, pretrained)
    results = sweep.run_stages([{"pretrain": {}}, arms])
    rows = [[name, r[0]["config"]["dataset"], r[0]["summary"]["trainable_parameters"],
             r[0]["summary"]["parameters"], spread(final_accuracies(results, name))] for name, r in results.items()]
    multi, same = f"multi-{copies}x-r{rank}", f"same-{copies}x-r{rank}"
    comparisons = [compare(f"{multi} − {other}", final_accuracies(results, multi), final_accuracies(results, other))
                   for other in (same, f"lora-r{rank}", "head-only")]
    comparisons.append(compare(f"informative: full − {multi}", final_accuracies(results, "full"),
                               final_accuracies(results, multi)))
    save_raw(out_dir, results, comparisons)

    def draw(axis):
        names = list(arms)
        draw_bars(axis, names, [final_accuracies(results, n) for n in names],
                  ["#999", "#333", "#69c", "#369", "#9c6", "#c63"])
        axis.set(ylabel=f"final test accuracy on {LORA_TARGET}", title="transfer: LoRA arms and baselines")

    plot(out_dir / "lora.png", draw)
    source = results["pretrain"][0]["config"]["dataset"]
    note = (f"Every seed pretrains one model on {source} (run pretrain) and transfers it to {LORA_TARGET} in each "
            f"arm, starting from that seed's pretrained weights (--init-from): head-only trains the classifier head "
            f"alone, full every weight; the LoRA arms (docs/lora.md) freeze the base, train adapters on the tied "
            f"weights and the head: lora-r{rank} and lora-r{copies * rank} plain LoRA of rank {rank} and "
            f"{copies * rank}, {same} and {multi} {copies} masked copies (density {LORA_DENSITY}) of one rank-{rank} "
            f"pair, under one mask (rank <= {rank}) or {copies} masks (rank up to {copies * rank}), at the trainable "
            f"parameters of lora-r{rank}. Adapter masks follow the seed.\n\n")
    return (seeds_note(results) + note
            + markdown_table(["run", "data", "trainable params", "params", "final acc"], rows)
            + "\n\n" + verdicts(comparisons))
