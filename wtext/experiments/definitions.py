"""The paper's experiments, registered by name with the claim each checks. Each experiment turns a scale into runs,
trains them (sweep.py), measures them (measures.py), compares them over seeds and ends with report() (report.py),
which writes results.json with the raw metrics of every run and the experiment's plot (plots.py) and returns the
table and verdicts of results.md.

Scales: "quick" runs on a 2-core CPU within minutes on the embedded synthetic data (the tests use it); "paper"
uses the paper-sized presets on CIFAR-10 or ImageNet32 from --data-dir and wants a GPU.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wtext.data import DatasetCache
from wtext.models import HEAD

from .measures import (best_accuracies, cka_of_model, cka_of_run, epoch_seconds, final_accuracies, mask_hamming,
                       mean_metric, off_diagonal_mean, trained_run)
from .plots import CkaMaps, Plot, draw_accuracy_curves, draw_bars
from .report import report, spread
from .statistics import compare, correlate, mean_std
from .sweep import Sweep, run_dir_of

SCALES = {
    "quick": dict(dataset="synthetic", synthetic_train=3072, synthetic_test=1024, epochs=4, batch_size=32, lr=3e-3,
                  model="resnet-tiny", width=8, depth=3, progress=False),
    "paper": dict(dataset="cifar10", epochs=100, batch_size=128, model="resnet-small", progress=True),
}
VIT = {"quick": dict(model="vit-tiny", width=None, depth=3), "paper": dict(model="vit-small", width=None)}


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

    def draw(axis):
        names = list(results)
        draw_bars(axis, names, [final_accuracies(results, n) for n in names], ["#999", "#69c", "#c63"] * 2)
        axis.set(ylabel="final test accuracy", title="mask modes at equal stored parameters")

    return report(out_dir, results, comparisons, Plot("masks.png", draw),
                  ["run", "stored params", "effective params / application", "final acc", "best acc"], rows,
                  effect=sweep.effect)


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

    def draw(axis):
        families = {family: [n for n in results if n.startswith(family)] for family in ("resnet", "vit")}
        draw_accuracy_curves(axis, results, families, "density")
        axis.set(xlabel="mask density", ylabel="final test accuracy", title="accuracy vs density")

    return report(out_dir, results, comparisons, Plot("density.png", draw),
                  ["run", "density", "effective params / application", "final acc"], rows, effect=sweep.effect)


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
    comparisons += [compare(f"equal FLOPs: w{2 * w}-d{d} − w{w}-d{4 * d}",
                            final_accuracies(results, f"w{2 * w}-d{d}"), final_accuracies(results, f"w{w}-d{4 * d}"))
                    for w in widths for d in depths if f"w{2 * w}-d{d}" in results and f"w{w}-d{4 * d}" in results]

    def draw(axis):
        by_width = {f"width {w}": [n for n, r in results.items() if r[0]["config"]["width"] == w] for w in widths}
        draw_accuracy_curves(axis, results, by_width, "depth")
        axis.set(xlabel="depth (tied applications)", ylabel="final test accuracy", title="width vs depth")

    note = ("Compare rows of equal parameters (width fixes the stored parameters; depth only adds compute) or of "
            "equal FLOPs per image.\n\n")
    return report(out_dir, results, comparisons, Plot("width_depth.png", draw),
                  ["run", "width", "depth", "stored params", "effective FLOPs / image", "final acc"], rows, note,
                  effect=sweep.effect)


DEQ_RUNS = ("implicit", "phantom", "one_step", "implicit_jr", "reversible")
DEQ_SPEEDUP = 3.0  # the paper: weight-tied models train over 3x faster than DEQs
# The DEQ runs test convergence every few solver iterations and stop once every sample converged, so their time is
# not inflated by iterations after convergence. On a CPU a test costs ~1 us against ~6 ms per iteration (any k is
# free); on a GPU each test is a synchronization, and every second iteration halves them at the price of at most
# one iteration per solve (benchmarks/NOTES.md, "DEQ early end").
DEQ_CHECK_EVERY = 2


def deq_mask_modes(given: str | None) -> tuple[str, str]:
    """(weight-tied arm's, DEQ twins') mask mode: multi and same (a DEQ twin applies its cell's weights once per
    solver iteration under one mask), or a --mask-mode given on the command line for every arm, so that e.g. learned
    masks are compared with learned masks (a DEQ twin learns one mask per weight: L = 1)."""
    return ("multi", "same") if given is None else (given, given)


@experiment("deq", "Weight-tied multi-mask models beat DEQ variants in accuracy and run over 3x faster.")
def deq_experiment(out_dir, scale, sweep):
    if sweep.fuse:
        # Fused members share their group's time: the weight-tied runs would look faster than they train alone.
        raise ValueError("the deq experiment compares training times; --fuse would split the weight-tied runs' time "
                         "across a fused group: run it without --fuse")
    tied_mode, deq_mode = deq_mask_modes(sweep.given.get("mask_mode"))
    reference = f"weight-tied-{tied_mode}"
    runs = {reference: {"mask_mode": tied_mode}}
    runs.update({f"deq-{variant}": {"deq": variant, "mask_mode": deq_mode, "deq_check_every": DEQ_CHECK_EVERY}
                 for variant in DEQ_RUNS})
    results = sweep.run(runs)
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

    def draw(axis):
        for name, seeds in results.items():
            times = [epoch_seconds(r) for r in seeds]
            accuracy = final_accuracies(results, name)
            axis.errorbar(mean_std(times)[0], mean_std(accuracy)[0], xerr=mean_std(times)[1],
                          yerr=mean_std(accuracy)[1], fmt="o", capsize=4)
            axis.annotate(name, (mean_std(times)[0], mean_std(accuracy)[0]), fontsize=8)
        axis.set(xlabel="training time per epoch (s)", ylabel="final test accuracy", title="weight-tied vs DEQ")

    note = (f"Masks: {tied_mode} in the weight-tied run, {deq_mode} in the DEQ twins. "
            f"DEQ solves test convergence every {DEQ_CHECK_EVERY} iterations and end once every sample stopped "
            f"(--deq-check-every), so no run pays for iterations after convergence. Solver steps: the mean over "
            f"samples of the iterations each sample took until it converged, diverged or hit the budget, in the "
            f"forward solve and in the implicit backward's adjoint solve (— where a run has none); deq-reversible's "
            f"steps are coupled steps of two cell evaluations each, and its backward undoes them instead of "
            f"solving.\n\n")
    return report(out_dir, results, comparisons, Plot("deq.png", draw),
                  ["run", "final acc", "train s / epoch", "inference s (test set)", "solver steps fwd",
                   "solver steps bwd", "train time vs weight-tied"], rows, note, effect=sweep.effect)


@experiment("cka", "Diverse masks lower the layer-wise similarity (CKA) of tied applications.")
def cka_experiment(out_dir, scale, sweep):
    datasets = DatasetCache()
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
    rows = [[name, len(matrices[name]["names"]), spread(off_diagonal[name]), spread(final_accuracies(results, name))]
            for name in results]
    return report(out_dir, results, comparisons, CkaMaps("cka.png", matrices),
                  ["run", "representations", "mean off-diagonal CKA", "final acc"], rows,
                  raw={"off_diagonal_cka": off_diagonal}, effect=sweep.effect)


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

    def draw(axis):
        draw_bars(axis, [b[0] for b in bars], [b[1] for b in bars],
                  ["#c63", "#69c", "#999"] * len(QUALITY_DATASETS[scale]))
        axis.set(ylabel="final test accuracy", title="tied models against the plain CNN")

    trained = next(iter(results.values()))[0]["config"]  # the budget as run (the command line may change it)
    budget = ", ".join(f"{k} {trained[k]}" for k in ("epochs", "batch_size", "lr"))
    note = (f"Budget: {budget}, Adam, the default augmentation. A claim row passes when the tied model is within "
            f"{QUALITY_MARGIN:g} of the plain CNN of the same seed.\n\n")
    return report(out_dir, results, comparisons, Plot("quality.png", draw),
                  ["data", "model", "stored params", "final acc", "range"], rows, note, effect=sweep.effect)


OVERLAPS = {"quick": [0.0, 0.5, 0.9, 1.0], "paper": [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0]}


@experiment("mask-overlap", "More diverse masks (less overlap between consecutive applications) lower the "
                            "layer-wise CKA and raise accuracy.")
def mask_overlap_experiment(out_dir, scale, sweep):
    datasets = DatasetCache()
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

    def draw(axis):
        for name, values in per_run.items():
            axis.scatter(values["hamming"], values["accuracy"], label=name)
        axis.set(xlabel="mask Hamming distance between consecutive applications", ylabel="final test accuracy",
                 title="accuracy vs mask diversity")
        axis.legend(fontsize=7)

    rows = [[results[name][0]["config"]["mask_overlap"], spread(values["hamming"]), spread(values["cka"]),
             spread(values["accuracy"])] for name, values in per_run.items()]
    note = ("Overlap: the fraction of each application's mask carried over from the previous application's "
            "(docs/masks.md); 0 is plain multi-mask, 1 the same mask everywhere. Hamming distance is measured on "
            "the runs' masks; CKA is the mean off-diagonal minibatch linear CKA between applications on the test "
            "set.\n\n")
    return report(out_dir, results, comparisons, Plot("mask_overlap.png", draw),
                  ["overlap", "mask Hamming distance", "mean off-diagonal CKA", "final acc"], rows, note,
                  raw={"per_run": per_run}, correlations=correlations, effect=sweep.effect)


# LoRA transfer: the rank r of the LoRA arms and the masked copies d of the multi-mask ones, per scale.
LORA_SHAPE = {"quick": (4, 2), "paper": (8, 2)}
LORA_DENSITY = 0.5
# The transfer target at both scales: digits has 10 classes like the synthetic set and CIFAR-10 (the head is
# carried over and trained); from ImageNet32's 1000 classes the head starts fresh (--init-from keeps a head of
# another shape freshly initialized).
LORA_TARGET = "digits"


def lora_arms(rank: int, copies: int, init_from) -> dict[str, dict]:
    """The transfer arms: options of each run; init_from is a function of the seed (the pretraining run's)."""
    transfer = {"dataset": LORA_TARGET, "init_from": init_from}
    arms = {"head-only": {**transfer, "train_only": HEAD}, "full": dict(transfer)}
    lora = {f"lora-r{rank}": f"r={rank},copies=1,density=1",
            f"lora-r{copies * rank}": f"r={copies * rank},copies=1,density=1",
            f"same-{copies}x-r{rank}": f"r={rank},copies={copies},density={LORA_DENSITY},mode=same",
            f"multi-{copies}x-r{rank}": f"r={rank},copies={copies},density={LORA_DENSITY},mode=multi"}
    arms.update({name: {**transfer, "lora": text, "train_only": HEAD} for name, text in lora.items()})
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

    def draw(axis):
        names = list(arms)
        draw_bars(axis, names, [final_accuracies(results, n) for n in names],
                  ["#999", "#333", "#69c", "#369", "#9c6", "#c63"])
        axis.set(ylabel=f"final test accuracy on {LORA_TARGET}", title="transfer: LoRA arms and baselines")

    source = results["pretrain"][0]["config"]["dataset"]
    note = (f"Every seed pretrains one model on {source} (run pretrain) and transfers it to {LORA_TARGET} in each "
            f"arm, starting from that seed's pretrained weights (--init-from): head-only trains the classifier head "
            f"alone, full every weight; the LoRA arms (docs/lora.md) freeze the base, train adapters on the tied "
            f"weights and the head: lora-r{rank} and lora-r{copies * rank} plain LoRA of rank {rank} and "
            f"{copies * rank}, {same} and {multi} {copies} masked copies (density {LORA_DENSITY}) of one rank-{rank} "
            f"pair, under one mask (rank <= {rank}) or {copies} masks (rank up to {copies * rank}), at the trainable "
            f"parameters of lora-r{rank}. Adapter masks follow the seed.\n\n")
    return report(out_dir, results, comparisons, Plot("lora.png", draw),
                  ["run", "data", "trainable params", "params", "final acc"], rows, note, effect=sweep.effect)


# Experiments kept in modules of their own register themselves on import (after the registry above exists).
from . import learned_masks  # noqa: E402,F401
