"""The statistics behind the experiments' verdicts, against hand-computed and tabulated values."""

import math

import pytest

from wtext.experiments.statistics import compare, correlate, mean_std, student_t_cdf, student_t_quantile


@pytest.mark.parametrize("df, quantile", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_t_quantiles_match_the_table(df, quantile):
    assert student_t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-3)


def test_t_cdf_is_symmetric_and_matches_the_cauchy_case():
    assert student_t_cdf(0.0, 5) == pytest.approx(0.5)
    assert student_t_cdf(-1.5, 5) == pytest.approx(1 - student_t_cdf(1.5, 5))
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-9)  # Cauchy: 1/2 + atan(1)/pi


def test_mean_std_by_hand():
    assert mean_std([2.0, 4.0, 6.0]) == (4.0, 2.0)
    assert mean_std([0.7]) == (0.7, 0.0)
    assert all(math.isnan(v) for v in mean_std([1.0, float("nan")]))


def test_paired_comparison_by_hand():
    # differences 1, 2, 3: mean 2, sample std 1, half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732 = 2.484
    comparison = compare("a − b", [3.0, 5.0, 7.0], [2.0, 3.0, 4.0])
    assert comparison.differences == (1.0, 2.0, 3.0)
    assert comparison.mean == 2.0 and comparison.std == 1.0
    assert comparison.low == pytest.approx(2 - 2.4841, abs=1e-3)
    assert comparison.high == pytest.approx(2 + 2.4841, abs=1e-3)
    assert comparison.verdict == "inconclusive"


def test_verdicts_follow_the_interval():
    assert compare("x", [0.9, 0.91, 0.92, 0.93], [0.8, 0.8, 0.81, 0.8]).verdict == "supported"
    assert compare("x", [0.8, 0.8, 0.81, 0.8], [0.9, 0.91, 0.92, 0.93]).verdict == "contradicted"
    single = compare("x", [0.9], [0.1])
    assert single.verdict == "inconclusive" and single.low is None


def test_bad_comparisons_are_errors():
    with pytest.raises(ValueError, match="paired values need the same seeds; got 2 and 3 values"):
        compare("x", [1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


def test_correlation_and_its_fisher_interval_by_hand():
    x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    y = [0.1, 0.9, 2.2, 2.8, 4.1, 5.0]
    correlation = correlate("y rises with x", x, y, +1)
    r = correlation.r
    half_width = 1.959964 / math.sqrt(3)
    assert correlation.low == pytest.approx(math.tanh(math.atanh(r) - half_width), abs=1e-6)
    assert correlation.high == pytest.approx(math.tanh(math.atanh(r) + half_width), abs=1e-6)
    assert correlation.verdict == "supported"
    assert correlate("y falls with x", x, y, -1).verdict == "contradicted"
    assert correlate("constant", x, [1.0] * 6, +1).verdict == "inconclusive"


def test_an_exactly_linear_relation_is_not_a_math_error():
    # statistics.correlation gives r = 1.0000000000000002 here; atanh(r) would raise
    x = [0.9957660611987523, 0.3143621718995784, 0.5671013225975386, 0.2092525999828333]
    y = [2.3115774160450195 * v + 0.43211675533619054 for v in x]
    correlation = correlate("linear", x, y, +1)
    assert correlation.r == pytest.approx(1.0) and correlation.verdict == "inconclusive"
