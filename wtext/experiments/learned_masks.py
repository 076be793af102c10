"""The learned-masks experiment: dense, same, static multi and learned (straight-through, gumbel) masks at equal
density for the ResNet-like and the ViT-like model, with the learned masks' Hamming distance between applications,
their share still at the seed-derived start, and the CKA between applications."""

from wtext.data import DatasetCache

from .definitions import VIT, experiment
from .measures import (applications_hamming, cka_of_model, final_accuracies, final_metric, independent_hamming,
                       mask_density, mask_hamming, metric_curve, off_diagonal_mean, trained_run)
from .plots import Panels, draw_bars, draw_metric_curves
from .report import report, spread
from .statistics import compare


# The arms of learned-masks, all at the family's density under pattern "exact" (each application keeps exactly
# round(p * numel) weights, as a learned mask keeps its top round(p * numel) scores), so every masked arm keeps the
# same number of weights and a learned arm's step 0 is the static multi-mask model of the same seed.
LEARNED_ARMS = {"dense": {"mask_mode": "dense"}, "same": {"mask_mode": "same"}, "multi": {"mask_mode": "multi"},
                "learned-ste": {"mask_mode": "learned", "mask_learning": "ste"},
                "learned-gumbel": {"mask_mode": "learned", "mask_learning": "gumbel"}}
LEARNED_CLAIMS = (("learned-ste", "multi"), ("learned-gumbel", "multi"), ("learned-ste", "dense"),
                  ("learned-gumbel", "dense"), ("learned-gumbel", "learned-ste"))


def learned_mask_runs(vit: dict) -> dict[str, dict]:
    """Every arm of LEARNED_ARMS for the ResNet (the scale's model) and the ViT (vit: VIT[scale])."""
    runs = {}
    for family, model in (("resnet", {}), ("vit", vit)):
        runs.update({f"{family}-{arm}": {**model, **options, "pattern": "exact"}
                     for arm, options in LEARNED_ARMS.items()})
    return runs


def mask_measures(seeds: list[dict], log, datasets: DatasetCache) -> dict[str, list]:
    """Per seed of one run: final accuracy, the final mask Hamming distance between applications (a learned run's
    last metrics record; a static run's masks, which never change), the share of mask entries still as at the
    seed-derived start (learned runs; nan for static ones), the mean off-diagonal CKA of the trained model, and a
    learned run's Hamming distance per epoch."""
    measures = {"accuracy": [r["summary"]["final_test_accuracy"] for r in seeds], "hamming": [],
                "equal_to_start": [], "cka": [], "hamming_curve": []}
    for result in seeds:
        config, model, data = trained_run(result, datasets)
        learned = config.mask_mode == "learned"
        measures["hamming"].append(final_metric(result, "mask_hamming") if learned else applications_hamming(model))
        measures["equal_to_start"].append(final_metric(result, "mask_equal_to_start"))
        measures["hamming_curve"].append(metric_curve(result, "mask_hamming"))
        measures["cka"].append(off_diagonal_mean(cka_of_model(model, data, config, log)[1]))
    return measures


@experiment("learned-masks", "Masks learned per application (straight-through or Gumbel), starting from the static "
                             "multi-masks, beat static multi-masks of equal density and dense weight-tied models.")
def learned_masks_experiment(out_dir, scale, sweep):
    datasets = DatasetCache()
    results = sweep.run(learned_mask_runs(VIT[scale]))
    per_run = {name: mask_measures(seeds, sweep.log, datasets) for name, seeds in results.items()}
    comparisons = [compare(f"{family}: {a} − {b}", final_accuracies(results, f"{family}-{a}"),
                           final_accuracies(results, f"{family}-{b}"))
                   for family in ("resnet", "vit") for a, b in LEARNED_CLAIMS]
    rows = []
    for name, values in per_run.items():
        density = mask_density(results[name][0]["config"])
        rows.append([name, f"{density:g}", spread(values["accuracy"]), spread(values["hamming"]),
                     f"{independent_hamming(density):.4f}", spread(values["equal_to_start"]), spread(values["cka"])])
    learned = [name for name in results if results[name][0]["config"]["mask_mode"] == "learned"]

    def draw_hamming(axis):
        # Epoch 0: a learned arm starts from the static multi-masks of its seed, whose distances the multi arm has.
        start = {name: per_run[f"{name.partition('-')[0]}-multi"]["hamming"] for name in learned}
        draw_metric_curves(axis, results, learned, "mask_hamming", start)
        for family in ("resnet", "vit"):
            density = mask_density(results[f"{family}-multi"][0]["config"])
            axis.axhline(independent_hamming(density), linestyle="--", color="#999", linewidth=1)
            axis.annotate(f"{family}: 2p(1−p), independent masks", (0, independent_hamming(density)), fontsize=7,
                          xytext=(2, 2), textcoords="offset points")
        axis.axhline(0, linestyle=":", color="#333", linewidth=1)
        axis.set(xlabel="epoch (0: the static multi-mask start)", ylabel="mask Hamming distance between applications",
                 title="how far the learned masks move apart")
        axis.legend(fontsize=7)

    def draw_accuracy(axis):
        names = list(results)
        draw_bars(axis, names, [final_accuracies(results, n) for n in names],
                  ["#999", "#69c", "#c63", "#6a6", "#a6c"] * 2)
        for label in axis.get_xticklabels():  # long names: end each under its bar rather than centre it there
            label.set_horizontalalignment("right")
        axis.set(ylabel="final test accuracy", title="learned against static masks")

    note = ("Arms, per model family at the family's density p (table), every masked arm under pattern exact (each "
            "application keeps exactly round(p · numel) weights of a tied weight): dense (no masks), same (one mask "
            "for every application), multi (a fixed mask per application, derived from the seed), learned-ste and "
            "learned-gumbel (a trained mask per application: trainable scores of which each application keeps the "
            "top round(p · numel), trained straight-through or by a hard-concrete relaxation; "
            "wtext/nn/learned_masks.py). The learned arms start from the static multi-mask model of their seed "
            "(same weights, same masks at step 0) and keep the density of every other masked arm.\n\n"
            "Mask Hamming distance: the share of a tied weight's entries on which two applications' masks differ, "
            "averaged over the pairs of applications and over the tied weights (learned arms: the last epoch's "
            "record; static arms: measured on their masks). Independent random masks of density p differ on 2p(1−p) "
            "of the entries (the multi arm, and the learned arms' start); one mask shared by every application "
            "differs on none (0: same and dense). A learned arm moving towards 0 learns to share its masks, one "
            "moving above 2p(1−p) to make them more different than chance. Masks equal to start: the share of mask "
            "entries still as at the seed-derived start (1 at step 0; — for static masks, which never change). CKA: "
            "the mean off-diagonal minibatch linear CKA between the trained model's applications on the test "
            "set.\n\n")
    return report(out_dir, results, comparisons, Panels("learned_masks.png", [draw_hamming, draw_accuracy]),
                  ["run", "density p", "final acc", "mask Hamming between applications", "2p(1−p)",
                   "masks equal to start", "mean off-diagonal CKA"], rows, note, raw={"per_run": per_run},
                   effect=sweep.effect)
