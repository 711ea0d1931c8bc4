"""WA / UA / macro-F1 against hand computations on known confusion matrices."""

import numpy as np
import pytest

from turbo_ray.metrics import confusion_matrix, macro_f1, unweighted_accuracy, weighted_accuracy


def from_confusion(cm):
    """Label vectors that realise confusion matrix `cm` (rows true, columns predicted)."""
    pairs = [(t, p) for t in range(len(cm)) for p in range(len(cm)) for _ in range(cm[t][p])]
    return np.array([t for t, _ in pairs]), np.array([p for _, p in pairs])


CM = [
    [50, 5, 3, 2],  # neutral
    [10, 30, 5, 5],  # happy
    [2, 8, 20, 0],  # angry
    [6, 0, 0, 14],
]  # sad


def test_metrics_on_a_known_confusion_matrix():
    y_true, y_pred = from_confusion(CM)
    assert confusion_matrix(y_true, y_pred, 4).tolist() == CM
    assert weighted_accuracy(y_true, y_pred) == pytest.approx((50 + 30 + 20 + 14) / 160)
    assert unweighted_accuracy(y_true, y_pred) == pytest.approx(
        (50 / 60 + 30 / 50 + 20 / 30 + 14 / 20) / 4
    )
    precision = [50 / 68, 30 / 43, 20 / 28, 14 / 21]
    recall = [50 / 60, 30 / 50, 20 / 30, 14 / 20]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert macro_f1(y_true, y_pred) == pytest.approx(sum(f1) / 4)


def test_ua_differs_from_wa_under_imbalance_and_ignores_absent_classes():
    y_true, y_pred = np.array([0] * 90 + [1] * 10), np.array([0] * 100)
    assert weighted_accuracy(y_true, y_pred) == pytest.approx(0.9)
    assert unweighted_accuracy(y_true, y_pred, 4) == pytest.approx(0.5)  # classes 2, 3 absent
    assert macro_f1(y_true, y_pred, 4) == pytest.approx((2 * 0.9 / 1.9 + 0) / 2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix([0, 1], [0])
