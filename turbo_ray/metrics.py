"""Classification metrics: WA (accuracy), UA (mean per-class recall), macro-F1, and for two
classes ROC-AUC of the positive one (detection tasks report it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """(classes × classes) counts, rows = true class, columns = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    n = num_classes or int(max(y_true.max(initial=-1), y_pred.max(initial=-1)) + 1)
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def weighted_accuracy(y_true, y_pred) -> float:
    """WA: the share of correct predictions."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def unweighted_accuracy(y_true, y_pred, num_classes: int | None = None) -> float:
    """UA: recall averaged over the classes present in y_true."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(1)
    present = support > 0
    return (
        float((cm.diagonal()[present] / support[present]).mean()) if present.any() else float("nan")
    )


def macro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    """F1 averaged over the classes present in y_true or y_pred (0 where precision+recall is 0)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp, support, predicted = cm.diagonal(), cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(len(tp)), where=present)
    return float(f1[present].mean()) if present.any() else float("nan")


def roc_auc(is_positive, score) -> float:
    """The area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count half), from the ranks (Mann-Whitney U). NaN without both kinds."""
    is_positive, score = np.asarray(is_positive, dtype=bool), np.asarray(score, dtype=float)
    positives, negatives = is_positive.sum(), (~is_positive).sum()
    if not positives or not negatives:
        return float("nan")
    ranks = average_ranks(score)
    return float(
        (ranks[is_positive].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    )


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (scipy's `rankdata`, without importing scipy
    into every training process)."""
    _, tie_group, sizes = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(sizes)
    return ((last - (sizes - 1) / 2)[tie_group]).astype(float)


def positive_index(classes: Sequence[str], positive_class: str | None) -> int:
    """Which of two classes ROC-AUC scores: `data.positive_class`, else the second."""
    if positive_class is None:
        return 1
    if positive_class not in classes:
        raise ValueError(f"data.positive_class {positive_class!r} is not one of {list(classes)}")
    return list(classes).index(positive_class)


def classification_report(
    y_true, y_pred, num_classes: int, probs=None, positive: int = 1
) -> dict[str, float]:
    """WA, UA, macro-F1; with two classes and the predicted probabilities (`probs`, one column
    per class), also ROC-AUC of class `positive`."""
    report = {
        "wa": weighted_accuracy(y_true, y_pred),
        "ua": unweighted_accuracy(y_true, y_pred, num_classes),
        "f1": macro_f1(y_true, y_pred, num_classes),
    }
    if num_classes == 2 and probs is not None:
        report["auc"] = roc_auc(np.asarray(y_true) == positive, np.asarray(probs)[:, positive])
    return report


SCORES = ("wa", "ua", "f1")  # a fold's test scores: accuracy, mean per-class recall, macro-F1
AUC = "auc"  # and, with two classes, ROC-AUC of the positive class


def scores_of(columns) -> tuple[str, ...]:
    """The scores rows (or a test pass's result) hold: `SCORES`, and `AUC` for two classes."""
    return (*SCORES, AUC) if AUC in columns else SCORES
