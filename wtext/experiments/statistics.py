"""Statistics of a sweep over seeds: mean ± std, paired comparisons with a confidence interval and a verdict, the
power of those comparisons (what difference the seeds could detect, how many seeds a difference needs), and Holm's
correction across an experiment's claims.

Compared runs share their seed (data order, initialization and masks' seed), so a claim "A beats B" is tested on
the per-seed differences A_s - B_s: a paired t-test. The distributions come from scipy.stats.
"""

import math
import statistics
from dataclasses import asdict, dataclass, replace

from scipy import optimize, stats

ALPHA = 0.05  # two-sided: the 95% intervals of the verdicts
POWER = 0.8
# Seed counts beyond this are reported as "beyond what N seeds can resolve", not as a number.
MAX_SEEDS = 1000


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    if any(math.isnan(value) for value in values):  # a metric a run does not have (statistics.stdev raises)
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def check_degrees_of_freedom(df: int) -> None:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1; got df={df}")


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    check_degrees_of_freedom(df)
    return float(stats.t.cdf(t, df))


def student_t_quantile(probability: float, df: int) -> float:
    """The t with P(T <= t) = probability (0.5 < probability < 1)."""
    if not 0.5 < probability < 1:
        raise ValueError(f"probability must be in (0.5, 1); got {probability}")
    check_degrees_of_freedom(df)
    return float(stats.t.ppf(probability, df))


def check_power_options(alpha: float, power: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got alpha={alpha!r}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1); got power={power!r}")


def paired_power(effect: float, std: float, seeds: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at level alpha with `seeds` pairs whose differences have mean `effect`
    and standard deviation `std`: P(|T| > t_crit) for T noncentral t with seeds - 1 degrees of freedom and
    noncentrality effect * sqrt(seeds) / std."""
    if seeds < 2:
        raise ValueError(f"a paired t-test needs >= 2 seeds; got seeds={seeds}")
    if std <= 0:
        return 1.0 if effect != 0 else alpha
    df = seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = abs(effect) * math.sqrt(seeds) / std
    upper, lower = stats.nct.sf(critical, df, shift), stats.nct.cdf(-critical, df, shift)
    # SciPy's noncentral t returns NaN far in its tails (large noncentrality); there the normal approximation is
    # exact to many digits.
    if not math.isfinite(upper):
        upper = stats.norm.sf(critical - shift)
    if not math.isfinite(lower):
        lower = stats.norm.cdf(-critical - shift)
    return float(upper + lower)


def seeds_needed(effect: float, std: float, alpha: float = ALPHA, power: float = POWER,
                 limit: int = MAX_SEEDS) -> int | None:
    """The fewest seeds (>= 2) whose paired t-test detects a mean difference `effect` with this power, given the
    per-seed differences' standard deviation `std`; None when even `limit` seeds do not (or the effect is 0)."""
    check_power_options(alpha, power)
    if effect == 0 or math.isnan(effect) or math.isnan(std):
        return None
    if paired_power(effect, std, limit, alpha) < power:
        return None
    low, high = 1, limit  # power grows with the seeds: the answer is in (low, high]
    while high - low > 1:
        middle = (low + high) // 2
        if middle >= 2 and paired_power(effect, std, middle, alpha) >= power:
            high = middle
        else:
            low = middle
    return high


def detectable_difference(std: float, seeds: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest mean difference that `seeds` seeds detect with this power (the minimum detectable difference),
    given the differences' standard deviation; None with fewer than 2 seeds."""
    check_power_options(alpha, power)
    if seeds < 2 or math.isnan(std):
        return None
    if std == 0:
        return 0.0
    high = std
    while paired_power(high, std, seeds, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda effect: paired_power(effect, std, seeds, alpha) - power, 0.0, high,
                                 xtol=1e-12 * std))


def paired_p_value(differences) -> float:
    """Two-sided p-value of the paired t-test of mean difference 0 (scipy.stats.ttest_1samp on the differences,
    the same as ttest_rel on the pairs); 1 with fewer than 2 seeds, 0 or 1 when the differences do not vary."""
    if len(differences) < 2:
        return 1.0
    mean, std = mean_std(list(differences))
    if std == 0:
        return 0.0 if mean != 0 else 1.0
    return float(stats.ttest_1samp(differences, 0.0).pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values of a family of tests (in the order given): the i-th smallest p times
    (m - i + 1), made monotone and capped at 1. A claim survives the family at level alpha when its adjusted p is
    below alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of A against B over seeds: the differences A_s - B_s, their mean and sample std, the
    two-sided confidence interval of the mean difference (None with a single seed) and the verdict on the claim
    "A > B": supported when the whole interval is above 0, contradicted when it is below 0, else inconclusive.

    What would decide it (paired t-test, two-sided alpha = 1 - confidence, power POWER): p_value; detectable: the
    smallest mean difference these seeds detect given the observed std (None with one seed); needed: the seeds that
    detect the observed mean difference (None: more than MAX_SEEDS, or no std to go by). Across an experiment's
    claims (assess): holm_p and holm_verdict, Holm's correction for testing them all; effect and effect_needed: the
    seeds a difference the user asked about needs."""

    label: str
    differences: tuple[float, ...]
    mean: float
    std: float
    low: float | None
    high: float | None
    confidence: float
    verdict: str
    p_value: float = 1.0
    detectable: float | None = None
    needed: int | None = None
    holm_p: float | None = None
    holm_verdict: str | None = None
    effect: float | None = None
    effect_needed: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def decision(self) -> str:
        """What would decide an inconclusive claim, in words ('' for a decided one)."""
        if self.verdict != "inconclusive":
            return ""
        if len(self.differences) < 2:
            return "needs >= 2 seeds"
        if self.needed is None:
            return f"below what {MAX_SEEDS} seeds can resolve"
        return f"would need ~{self.needed} seeds"


def compare(label: str, a: list[float], b: list[float], confidence: float = 0.95) -> Comparison:
    """Paired comparison of the claim "A > B" from per-seed values (a[s] and b[s] share seed s)."""
    if len(a) != len(b):
        raise ValueError(f"{label}: paired values need the same seeds; got {len(a)} and {len(b)} values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    differences = tuple(x - y for x, y in zip(a, b))
    mean, std = mean_std(list(differences))
    if len(differences) < 2:
        return Comparison(label, differences, mean, std, None, None, confidence, "inconclusive")
    half_width = student_t_quantile(0.5 + confidence / 2, len(differences) - 1) * std / math.sqrt(len(differences))
    low, high = mean - half_width, mean + half_width
    verdict = "supported" if low > 0 else "contradicted" if high < 0 else "inconclusive"
    alpha = 1 - confidence
    return Comparison(label, differences, mean, std, low, high, confidence, verdict,
                      p_value=paired_p_value(differences),
                      detectable=detectable_difference(std, len(differences), alpha),
                      needed=seeds_needed(mean, std, alpha) if std > 0 else None)


def assess(comparisons: list[Comparison], effect: float | None = None) -> list[Comparison]:
    """An experiment's comparisons with Holm's correction across all of them (holm_p, holm_verdict) and, given an
    effect (a difference in the rows' own units), the seeds each row needs to detect it."""
    adjusted = holm([c.p_value for c in comparisons])
    assessed = []
    for comparison, holm_p in zip(comparisons, adjusted):
        alpha = 1 - comparison.confidence
        decided = len(comparison.differences) >= 2 and holm_p < alpha
        holm_verdict = ("supported" if comparison.mean > 0 else "contradicted") if decided else "inconclusive"
        extra = {}
        if effect is not None:
            std = comparison.std if len(comparison.differences) >= 2 else math.nan
            extra = {"effect": effect, "effect_needed": seeds_needed(effect, std, alpha) if std > 0 else None}
        assessed.append(replace(comparison, holm_p=holm_p, holm_verdict=holm_verdict, **extra))
    return assessed


def comparison_row(comparison: Comparison) -> list[str]:
    """[claim, mean ± std, CI, seeds, verdict] cells for a markdown table, then the power and Holm cells
    (p, Holm p, Holm verdict, detectable difference, what would decide it; seeds for the asked effect if any)."""
    interval = ("— (1 seed)" if comparison.low is None
                else f"[{comparison.low:+.4f}, {comparison.high:+.4f}]")
    row = [comparison.label, f"{comparison.mean:+.4f} ± {comparison.std:.4f}", interval,
           str(len(comparison.differences)), comparison.verdict]
    row += [f"{comparison.p_value:.3g}", "—" if comparison.holm_p is None else f"{comparison.holm_p:.3g}",
            comparison.holm_verdict or "—",
            "—" if comparison.detectable is None else f"±{comparison.detectable:.4f}",
            comparison.decision() or "—"]
    if comparison.effect is not None:
        row.append(f">{MAX_SEEDS}" if comparison.effect_needed is None else str(comparison.effect_needed))
    return row


COMPARISON_HEADER = ["claim (A − B > 0)", "paired difference (mean ± std)", "95% CI", "seeds", "verdict", "p",
                     "Holm p", "Holm verdict", "detectable (power 0.8)", "to decide"]


def comparison_header(effect: float | None = None) -> list[str]:
    return COMPARISON_HEADER + ([f"seeds for ±{effect:g}"] if effect is not None else [])


@dataclass(frozen=True)
class Correlation:
    """Pearson's r between two per-run quantities over n points, its 95% interval (Fisher z; None below 4 points)
    and the verdict on the claim that r has the `expected` sign (+1 or -1)."""

    label: str
    r: float
    points: int
    low: float | None
    high: float | None
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def correlate(label: str, x: list[float], y: list[float], expected: int) -> Correlation:
    """Pearson correlation of x and y, tested for the sign `expected` (+1: y grows with x, -1: y falls)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"{label}: a correlation needs two equally long lists of >= 2 values; got {len(x)} and "
                         f"{len(y)}")
    if expected not in (1, -1):
        raise ValueError(f"expected must be +1 or -1; got {expected}")
    try:
        r = statistics.correlation(x, y)
    except statistics.StatisticsError:  # a constant list: no correlation to speak of
        return Correlation(label, math.nan, len(x), None, None, "inconclusive")
    if len(x) < 4 or abs(r) >= 1:  # rounding can give |r| a hair above 1 for exactly linear data
        return Correlation(label, r, len(x), None, None, "inconclusive")
    half_width = statistics.NormalDist().inv_cdf(0.975) / math.sqrt(len(x) - 3)
    low, high = math.tanh(math.atanh(r) - half_width), math.tanh(math.atanh(r) + half_width)
    signed_low, signed_high = sorted((expected * low, expected * high))
    verdict = "supported" if signed_low > 0 else "contradicted" if signed_high < 0 else "inconclusive"
    return Correlation(label, r, len(x), low, high, verdict)


def correlation_row(correlation: Correlation) -> list[str]:
    interval = "—" if correlation.low is None else f"[{correlation.low:+.3f}, {correlation.high:+.3f}]"
    return [correlation.label, f"{correlation.r:+.3f}", interval, str(correlation.points), correlation.verdict]


CORRELATION_HEADER = ["claim", "Pearson r", "95% CI (Fisher z)", "points", "verdict"]
