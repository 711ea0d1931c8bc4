"""Classification metrics of the IEMOCAP protocol: WA (accuracy), UA (mean per-class recall),
macro-F1."""

from __future__ import annotations

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


def classification_report(y_true, y_pred, num_classes: int) -> dict[str, float]:
    return {
        "wa": weighted_accuracy(y_true, y_pred),
        "ua": unweighted_accuracy(y_true, y_pred, num_classes),
        "f1": macro_f1(y_true, y_pred, num_classes),
    }
