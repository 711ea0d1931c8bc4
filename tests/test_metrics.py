"""WA / UA / macro-F1 against hand computations on known confusion matrices; ROC-AUC against
its pairwise definition."""

import numpy as np
import pytest

from turbo_ray.metrics import (
    classification_report,
    confusion_matrix,
    macro_f1,
    positive_index,
    roc_auc,
    unweighted_accuracy,
    weighted_accuracy,
)


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


def test_roc_auc_is_the_share_of_positive_negative_pairs_ranked_right_ties_half():
    rng = np.random.default_rng(0)
    is_positive = rng.random(40) < 0.4
    score = rng.integers(0, 6, 40) / 5  # many ties
    pairs = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for p in score[is_positive]
        for n in score[~is_positive]
    ]
    assert roc_auc(is_positive, score) == pytest.approx(np.mean(pairs))
    assert roc_auc([True, False], [0.9, 0.1]) == 1.0
    assert np.isnan(roc_auc([True, True], [0.2, 0.3]))  # no negative


def test_two_classes_report_the_auc_of_the_positive_class():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    y_true = [0, 1, 1, 0]
    report = classification_report(y_true, probs.argmax(1), 2, probs, positive=1)
    assert report["auc"] == pytest.approx(roc_auc(np.array(y_true) == 1, probs[:, 1]))
    flipped = classification_report(y_true, probs.argmax(1), 2, probs, positive=0)
    assert flipped["auc"] == pytest.approx(report["auc"])  # the same ranking, seen from class 0
    assert "auc" not in classification_report([0, 1, 2], [0, 1, 2], 3, np.eye(3))
    assert positive_index(["no", "yes"], None) == 1 and positive_index(["no", "yes"], "no") == 0
