"""What an experiment reports: results.json (the raw metrics of every run and seed), its plot, and the body of
results.md (its table of runs over seeds and a verdict per claim)."""

import json
import math
from pathlib import Path

from .plots import CkaMaps, Panels, Plot
from .statistics import (CORRELATION_HEADER, MAX_SEEDS, POWER, Comparison, Correlation, assess, comparison_header,
                         comparison_row, correlation_row, mean_std)
from .sweep import markdown_table


def spread(values: list[float], digits: int = 4) -> str:
    """'mean ± std' of per-seed values ('—' for a metric the run does not have, e.g. a weight-tied run's solver
    steps)."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def seeds_note(results: dict) -> str:
    seeds = sorted({r["seed"] for runs in results.values() for r in runs})
    return (f"Seeds {', '.join(map(str, seeds))}: each cell is the mean ± sample std over them; final acc is the "
            f"last epoch's test accuracy, best acc the best epoch's.\n\n")


def verdicts(comparisons: list[Comparison], effect: float | None = None) -> str:
    """The comparison table: each claim's paired difference over seeds, its 95% interval and the verdict, with
    Holm's correction across the claims and what would decide the undecided ones (comparisons: from assess)."""
    explanation = ("Each row tests a claim \"A − B > 0\" on the per-seed differences of runs that share their seed "
                   "(data order, initialization, masks): mean ± sample std, the 95% t-interval of the mean, and the "
                   "verdict: supported when the interval lies above 0, contradicted when below, else inconclusive. "
                   "With one seed there is no interval and every verdict is inconclusive.\n\n"
                   "The verdict column judges each claim alone. Testing all rows at once, one of them may pass by "
                   "chance: Holm p and Holm verdict correct for that (Holm's step-down over this table's rows, "
                   "family-wise error 5%); quote the Holm verdict when citing several rows together. Detectable: the "
                   f"smallest mean difference these seeds would detect with power {POWER:g} (paired t-test, "
                   "two-sided 5%) given the observed spread. To decide: for an inconclusive row, the seeds that "
                   f"would detect its observed mean difference with that power, or \"below what {MAX_SEEDS} seeds "
                   "can resolve\" when the difference is too small for its spread"
                   + (f"; seeds for ±{effect:g}: the seeds that would detect a difference of {effect:g} (in the "
                      "row's own units)" if effect is not None else "")
                   + ". `python -m wtext.experiments plan` turns these into seeds and GPU-hours.\n\n")
    return "## Verdicts\n\n" + explanation + markdown_table(comparison_header(effect),
                                                             [comparison_row(c) for c in comparisons])


def report(out_dir: Path, results: dict, comparisons: list[Comparison], plot: Plot | Panels | CkaMaps,
           header: list[str], rows: list[list], note: str = "", raw: dict | None = None,
           correlations: list[Correlation] = (), effect: float | None = None) -> str:
    """How every experiment ends. Writes results.json (every seed's summary, metrics and config per run, the
    comparisons, raw: the experiment's own measurements, and the correlations), then the plot. Returns the body of
    results.md: the seeds, note, the table of runs (header, rows), the verdicts and, when there are any, the
    correlations. effect: a difference to size the seeds for (--effect), in the rows' units."""
    comparisons = assess(comparisons, effect)
    payload = {"runs": results, "comparisons": [c.as_dict() for c in comparisons], **(raw or {})}
    if correlations:
        payload["correlations"] = [c.as_dict() for c in correlations]
    (out_dir / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    plot.save(out_dir)
    body = seeds_note(results) + note + markdown_table(header, rows) + "\n\n" + verdicts(comparisons, effect)
    if correlations:
        body += ("\n\nCorrelations over every (run, seed):\n\n"
                 + markdown_table(CORRELATION_HEADER, [correlation_row(c) for c in correlations]))
    return body
