"""The paired comparison of modes on hand-made score tables, against values computed here
independently."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from turbo_ray.comparison import format_comparison, paired_comparison, sign_flip_p, t_interval


def test_sign_flip_p_is_the_exact_share_of_sign_patterns():
    d = np.array([0.04, 0.01, -0.02, 0.03, 0.05])
    observed, as_far = abs(d.mean()), 0
    for signs in itertools.product((1, -1), repeat=5):  # every pattern, counted one by one
        as_far += abs(sum(s * x for s, x in zip(signs, d)) / 5) >= observed - 1e-12
    assert sign_flip_p(d) == pytest.approx(as_far / 32)
    # five folds that all agree: the smallest p five folds can give, above 0.05
    assert sign_flip_p(np.array([0.01, 0.02, 0.03, 0.04, 0.05])) == pytest.approx(2 / 32)


def test_t_interval_is_scipys_one_sample_interval():
    d = np.array([0.04, 0.01, -0.02, 0.03, 0.05])
    expected = stats.ttest_1samp(d, 0).confidence_interval(0.95)
    assert t_interval(d) == pytest.approx((expected.low, expected.high))
    assert all(np.isnan(t_interval(np.array([0.1]))))


def test_pairs_match_fold_and_seed_and_seeds_average_within_a_fold():
    ua = {  # (mode, seed, fold) -> UA
        ("baseline", 0, 1): 0.50, ("baseline", 1, 1): 0.60,
        ("baseline", 0, 2): 0.70, ("baseline", 1, 2): 0.70,
        ("baseline", 0, 3): 0.40, ("baseline", 1, 3): 0.50,
        ("turbo", 0, 1): 0.60, ("turbo", 1, 1): 0.60,
        ("turbo", 0, 2): 0.65, ("turbo", 1, 2): 0.75,
        ("turbo", 0, 3): 0.60, ("turbo", 1, 3): 0.70,
    }  # fmt: skip
    rows = pd.DataFrame(
        [{"mode": m, "seed": s, "test_session": f, "ua": v, "wa": v} for (m, s, f), v in ua.items()]
    ).sample(frac=1, random_state=0)  # the order of the rows does not matter
    (row,) = paired_comparison(rows, scores=("ua",)).itertuples(index=False)
    per_fold = np.array([(0.10 + 0.00) / 2, (-0.05 + 0.05) / 2, (0.20 + 0.20) / 2])
    assert row.mode == "turbo" and row.folds == 3 and row.pairs == 6
    assert row.difference == pytest.approx(per_fold.mean())
    assert (row.ci_low, row.ci_high) == pytest.approx(t_interval(per_fold))
    assert row.p == pytest.approx(sign_flip_p(per_fold))
    assert (row.wins, row.ties, row.losses) == (4, 1, 1)
    assert row.baseline == pytest.approx(np.mean([0.5, 0.6, 0.7, 0.7, 0.4, 0.5]))
    printed = format_comparison(paired_comparison(rows), "turbo vs baseline")
    assert "turbo UA:" in printed and "wins/ties/losses 4/1/1 of 6 pairs (3 folds)" in printed


def test_equal_scores_summed_in_another_order_tie_and_no_pairs_give_no_p():
    # 0.1 + 0.2 and 0.3 are the same UA computed two ways (they differ in the last bit)
    rows = pd.DataFrame(
        [
            {"mode": "baseline", "seed": 0, "test_session": 1, "ua": 0.1 + 0.2, "wa": 0.5},
            {"mode": "turbo", "seed": 0, "test_session": 1, "ua": 0.3, "wa": 0.6},
        ]
    )
    ua, wa = paired_comparison(rows).set_index("score").loc[["ua", "wa"]].itertuples()
    assert (ua.wins, ua.ties, ua.losses) == (0, 1, 0)
    assert (wa.wins, wa.ties, wa.losses) == (1, 0, 0)
    assert np.isnan(sign_flip_p(np.array([])))
