"""Statistics of a sweep over seeds: mean ± std, and paired comparisons with a confidence interval and a verdict.

Compared runs share their seed (data order, initialization and masks' seed), so a claim "A beats B" is tested on
the per-seed differences A_s - B_s: a paired t-interval. Plain standard library: no SciPy needed.
"""

import math
import statistics
from dataclasses import asdict, dataclass

def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    if any(math.isnan(value) for value in values):  # a metric a run does not have (statistics.stdev raises)
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with df degrees of freedom, by Simpson's rule on the density (accurate to ~1e-9
    for the quantiles used here)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1; got df={df}")
    if t < 0:
        return 1.0 - student_t_cdf(-t, df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    intervals = 2000
    width = t / intervals
    total = density(0.0) + density(t)
    total += sum((4 if i % 2 else 2) * density(i * width) for i in range(1, intervals))
    return 0.5 + total * width / 3


def student_t_quantile(probability: float, df: int) -> float:
    """The t with P(T <= t) = probability (0.5 < probability < 1), by bisection on student_t_cdf."""
    if not 0.5 < probability < 1:
        raise ValueError(f"probability must be in (0.5, 1); got {probability}")
    if df == 1:  # the Cauchy distribution: closed form, and too heavy-tailed for a fixed bracket
        return math.tan(math.pi * (probability - 0.5))
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < probability:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        if student_t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of A against B over seeds: the differences A_s - B_s, their mean and sample std, the
    two-sided confidence interval of the mean difference (None with a single seed) and the verdict on the claim
    "A > B": supported when the whole interval is above 0, contradicted when it is below 0, else inconclusive."""

    label: str
    differences: tuple[float, ...]
    mean: float
    std: float
    low: float | None
    high: float | None
    confidence: float
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


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
    return Comparison(label, differences, mean, std, low, high, confidence, verdict)


def comparison_row(comparison: Comparison) -> list[str]:
    """[claim, mean ± std, CI, seeds, verdict] cells for a markdown table."""
    interval = ("— (1 seed)" if comparison.low is None
                else f"[{comparison.low:+.4f}, {comparison.high:+.4f}]")
    return [comparison.label, f"{comparison.mean:+.4f} ± {comparison.std:.4f}", interval,
            str(len(comparison.differences)), comparison.verdict]


COMPARISON_HEADER = ["claim (A − B > 0)", "paired difference (mean ± std)", "95% CI", "seeds", "verdict"]


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
