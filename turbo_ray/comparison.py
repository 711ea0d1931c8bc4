"""Did a method help? Each mode's test scores against the baseline's, paired over the same folds
and seeds (the rows of a job run with several `--modes` and `--seeds`).

    table = paired_comparison(rows)        # a row per (mode, score): difference, interval, p, …
    print(format_comparison(table, "Turbo vs baseline, nested, seeds 0,1,2"))

The fold is the unit of independence: the seeds of one fold share its test speakers, so they are
not independent pairs. Per fold, the difference is averaged over its seeds; the mean difference is
the mean of those (the same as over the (fold, seed) pairs when every fold has every seed). The 95 %
interval is a paired t interval over the folds (n - 1 degrees of freedom): with five folds a
bootstrap has only 126 distinct resamples and its interval comes out too narrow. The p-value is an
exact sign-flip permutation test that flips whole folds (all 2^n sign patterns): with five folds its
smallest two-sided value is 2/32 = 0.0625, so five folds alone can never show p < 0.05. Wins, ties
and losses count the (fold, seed) pairs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from turbo_ray.config import BASELINE
from turbo_ray.formatting import counted

COMPARED = ("wa", "ua")  # the scores compared: accuracy and mean per-class recall
LEVEL = 0.95
TIE = 1e-9  # a pair's scores closer than this are a tie (the same score, summed in another order)


def compared_with_baseline(rows: pd.DataFrame) -> pd.DataFrame | None:
    """`paired_comparison` of a job's rows, if it ran the baseline and another mode."""
    modes = set(rows["mode"]) if "mode" in rows else set()
    return paired_comparison(rows) if BASELINE in modes and len(modes) > 1 else None


def paired_comparison(
    rows: pd.DataFrame, baseline: str = BASELINE, scores: tuple[str, ...] = COMPARED
) -> pd.DataFrame:
    """A row per mode other than `baseline` and per score: both means, the mean paired difference,
    its 95 % interval, the sign-flip p-value and the pairs won, tied and lost. `rows`: one per
    (mode, seed, test_session) with the scores as fractions."""
    base = rows[rows["mode"] == baseline]
    table = []
    for mode in rows["mode"].unique():
        if mode == baseline:
            continue
        pairs = rows[rows["mode"] == mode].merge(
            base, on=["test_session", "seed"], suffixes=("", "_base")
        )
        for score in scores:
            diff = pairs[score] - pairs[f"{score}_base"]
            per_fold = diff.groupby(pairs["test_session"]).mean().to_numpy()
            low, high = t_interval(per_fold)
            table.append(
                {
                    "mode": mode,
                    "score": score,
                    "baseline": pairs[f"{score}_base"].mean(),
                    "method": pairs[score].mean(),
                    "difference": per_fold.mean(),
                    "ci_low": low,
                    "ci_high": high,
                    "p": sign_flip_p(per_fold),
                    "wins": int((diff > TIE).sum()),
                    "ties": int((diff.abs() <= TIE).sum()),
                    "losses": int((diff < -TIE).sum()),
                    "folds": len(per_fold),
                    "pairs": len(diff),
                }
            )
    return pd.DataFrame(table)


def t_interval(differences: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The paired t interval of the mean of `differences` (NaN for fewer than two)."""
    n = len(differences)
    if n < 2:
        return math.nan, math.nan
    from scipy import stats  # here, not at import: the job's last step, and only with a baseline

    half = stats.t.ppf(0.5 + level / 2, n - 1) * differences.std(ddof=1) / math.sqrt(n)
    return differences.mean() - half, differences.mean() + half


def sign_flip_p(differences: np.ndarray) -> float:
    """Two-sided exact sign-flip permutation p-value of the mean of `differences`: the share of
    the 2^n sign patterns whose mean is at least as far from 0 as the observed one (NaN for no
    differences)."""
    if not len(differences):
        return math.nan
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(differences))))
    means = np.abs(signs @ differences) / len(differences)
    return float(np.mean(means >= abs(differences.mean()) - 1e-12))


def format_comparison(table: pd.DataFrame, title: str) -> str:
    """The comparison as printed: scores in %, the interval, p, wins/ties/losses."""
    lines = [
        title,
        f"(difference = mode - baseline, paired over folds and seeds, in %; {LEVEL:.0%} paired t "
        "interval over folds; p: exact sign-flip test over folds)",
    ]
    for row in table.itertuples(index=False):
        interval = (
            f"[{100 * row.ci_low:+6.2f}, {100 * row.ci_high:+6.2f}]"
            if row.folds > 1
            else "[no interval: 1 fold]"
        )
        lines.append(
            f"  {row.mode:>8} {row.score.upper()}: {100 * row.method:6.2f}"
            f" vs {100 * row.baseline:6.2f}"
            f"  difference {100 * row.difference:+6.2f}"
            f"  {interval}  p = {row.p:.3f}"
            f"  wins/ties/losses {row.wins}/{row.ties}/{row.losses} of {row.pairs} pairs"
            f" ({counted(row.folds, 'fold')})"
        )
    return "\n".join(lines)
