"""The statistics behind the experiments' verdicts, against hand-computed and tabulated values."""

import math

import numpy as np
import pytest
from scipy import stats

from wtext.experiments.statistics import (assess, compare, comparison_row, correlate, detectable_difference, holm,
                                          mean_std, paired_power, seeds_needed, student_t_cdf, student_t_quantile)


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


# Power and sample size of the paired t-test (two-sided 5%, power 0.8) against the published table values of
# G*Power ("means: difference from constant (one sample / matched pairs)"): dz 0.2 -> 199 pairs, 0.5 -> 34, 0.8 ->
# 15, 1.0 -> 10.
@pytest.mark.parametrize("effect_size, pairs", [(0.2, 199), (0.5, 34), (0.8, 15), (1.0, 10)])
def test_seeds_needed_match_the_paired_t_table(effect_size, pairs):
    assert seeds_needed(effect_size * 0.03, 0.03) == pairs
    assert paired_power(effect_size, 1.0, pairs) >= 0.8 > paired_power(effect_size, 1.0, pairs - 1)


def test_power_matches_a_simulation_of_the_paired_t_test():
    # 20000 simulated experiments of 12 pairs whose differences are N(0.6, 1): the share the t-test rejects.
    generator = np.random.default_rng(0)
    differences = generator.normal(0.6, 1.0, size=(20000, 12))
    t = differences.mean(1) / (differences.std(1, ddof=1) / math.sqrt(12))
    simulated = float(np.mean(np.abs(t) > student_t_quantile(0.975, 11)))
    assert paired_power(0.6, 1.0, 12) == pytest.approx(simulated, abs=0.01)


def test_detectable_difference_is_where_the_power_reaches_its_target():
    detectable = detectable_difference(0.02, 5)
    assert paired_power(detectable, 0.02, 5) == pytest.approx(0.8, abs=1e-9)
    assert seeds_needed(detectable * 1.001, 0.02) == 5
    assert detectable_difference(0.02, 1) is None and detectable_difference(0.0, 3) == 0.0


def test_seeds_needed_edge_cases():
    assert seeds_needed(0.0, 0.01) is None  # no difference is never detected
    assert seeds_needed(1e-6, 1.0) is None  # beyond MAX_SEEDS
    with pytest.raises(ValueError, match="power must be in"):
        seeds_needed(0.1, 0.1, power=1.5)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_paired_p_value_is_scipys_paired_t_test():
    a, b = [3.0, 5.0, 7.0, 6.5], [2.0, 3.0, 4.0, 6.0]
    assert compare("x", a, b).p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3) = 3.464 with 2 degrees of freedom: p = 0.0742
    assert compare("x", [3.0, 5.0, 7.0], [2.0, 3.0, 4.0]).p_value == pytest.approx(0.0742, abs=1e-4)


def test_assess_adds_holm_verdicts_and_the_seeds_an_effect_needs():
    strong = compare("strong", [0.9, 0.91, 0.92, 0.93], [0.8, 0.8, 0.81, 0.8])
    weak = compare("weak", [0.9, 0.93, 0.88, 0.95], [0.89, 0.9, 0.9, 0.9])
    assessed = assess([strong, weak], effect=0.01)
    assert [c.verdict for c in assessed] == [strong.verdict, weak.verdict] == ["supported", "inconclusive"]
    assert assessed[0].holm_verdict == "supported" and assessed[1].holm_verdict == "inconclusive"
    assert assessed[0].holm_p == pytest.approx(2 * min(strong.p_value, weak.p_value))
    assert assessed[1].effect_needed == seeds_needed(0.01, weak.std)
    assert weak.decision() == f"would need ~{weak.needed} seeds" and strong.decision() == ""
    row = comparison_row(assessed[1])
    assert row[:5] == ["weak", f"{weak.mean:+.4f} ± {weak.std:.4f}", f"[{weak.low:+.4f}, {weak.high:+.4f}]", "4",
                       "inconclusive"]
    assert row[-1] == str(assessed[1].effect_needed)


def test_a_supported_row_can_fail_holm_across_many_claims():
    # p just under 0.05 alone; with four other null claims Holm multiplies it by 5.
    rows = [compare("edge", [1.0, 1.2, 1.1, 0.2], [0.0, 0.0, 0.0, 0.0])]
    rows += [compare(f"null {i}", [0.1, -0.1, 0.2, -0.2], [0.0, 0.0, 0.0, 0.0]) for i in range(4)]
    assert rows[0].p_value < 0.05 and rows[0].verdict == "supported"
    assessed = assess(rows)
    assert assessed[0].holm_verdict == "inconclusive" and assessed[0].verdict == "supported"
