"""pjx.metrics: confusion matrix on device, report vs hand computations and NumPy references."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pjx import metrics


def np_confusion(y_true, y_pred, C, w=None):
    cm = np.zeros((C, C))
    w = np.ones(len(y_true)) if w is None else w
    for t, p, wi in zip(y_true, y_pred, w):
        cm[t, p] += wi
    return cm


def np_mcc_from_samples(y_true, y_pred, C):
    """Gorodkin's R_K as a correlation of one-hot matrices: cov(X,Y)/sqrt(cov(X,X)cov(Y,Y))."""
    X, Y = np.eye(C)[y_true], np.eye(C)[y_pred]
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    cxy, cxx, cyy = (Xc * Yc).sum(), (Xc * Xc).sum(), (Yc * Yc).sum()
    return 0.0 if cxx * cyy == 0 else cxy / math.sqrt(cxx * cyy)


def np_per_class(y_true, y_pred, c):
    tp = np.sum((y_pred == c) & (y_true == c))
    fp = np.sum((y_pred == c) & (y_true != c))
    fn = np.sum((y_pred != c) & (y_true == c))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


class ConfusionMatrixTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_from_logits_and_preds_with_weights(self):
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(50, 4)).astype(np.float32)
        labels = rng.integers(0, 4, size=50)
        w = rng.integers(0, 2, size=50).astype(np.float32)
        fn = self.variant(metrics.confusion_matrix, static_argnums=2)
        cm = fn(logits, labels, 4, w)
        chex.assert_shape(cm, (4, 4))
        assert cm.dtype == jnp.float32
        want = np_confusion(labels, logits.argmax(-1), 4, w)
        np.testing.assert_array_equal(cm, want)
        np.testing.assert_array_equal(fn(logits.argmax(-1), labels, 4, w), want)
        np.testing.assert_array_equal(
            fn(logits, labels, 4), np_confusion(labels, logits.argmax(-1), 4)
        )

    def test_leading_dims_out_of_range_and_aggregation(self):
        labels = np.array([[0, 1, 2], [2, -1, 1]])
        preds = np.array([[0, 2, 2], [1, 1, 5]])
        cm = np.asarray(metrics.confusion_matrix(preds, labels, 3))
        want = np.zeros((3, 3))
        want[0, 0] = want[1, 2] = want[2, 2] = want[2, 1] = 1  # (-1, 1) and (1, 5) dropped
        np.testing.assert_array_equal(cm, want)
        halves = metrics.confusion_matrix(preds[:1], labels[:1], 3) + metrics.confusion_matrix(
            preds[1:], labels[1:], 3
        )
        np.testing.assert_array_equal(halves, cm)


class TestReport:
    def test_binary_by_hand(self):
        # rows = true: TN=5, FP=2, FN=1, TP=3.
        r = metrics.classification_report(np.array([[5, 2], [1, 3]]))
        assert r["accuracy"] == pytest.approx(8 / 11)
        assert r["precision"] == pytest.approx(3 / 5)
        assert r["recall"] == pytest.approx(3 / 4)
        assert r["f1"] == pytest.approx(2 / 3)
        assert r["mcc"] == pytest.approx((3 * 5 - 2 * 1) / math.sqrt(5 * 4 * 7 * 6))
        # class 0: P = 5/6, R = 5/7, F1 = 10/13.
        assert r["precision_macro"] == pytest.approx((5 / 6 + 3 / 5) / 2)
        assert r["recall_macro"] == pytest.approx((5 / 7 + 3 / 4) / 2)
        assert r["f1_macro"] == pytest.approx((10 / 13 + 2 / 3) / 2)
        assert r["count"] == 11
        assert all(isinstance(v, float) for v in r.values())

    def test_binary_mcc_is_pearson(self):
        rng = np.random.default_rng(1)
        y = rng.integers(0, 2, 200)
        p = np.where(rng.random(200) < 0.7, y, 1 - y)
        r = metrics.classification_report(np_confusion(y, p, 2))
        assert r["mcc"] == pytest.approx(np.corrcoef(y, p)[0, 1])

    @pytest.mark.parametrize("C", [3, 5])
    def test_multiclass_vs_numpy(self, C):
        rng = np.random.default_rng(C)
        y = rng.integers(0, C, 300)
        p = np.where(rng.random(300) < 0.5, y, rng.integers(0, C, 300))
        cm = np.asarray(metrics.confusion_matrix(p, y, C))
        r = metrics.classification_report(cm)
        assert r["accuracy"] == pytest.approx(np.mean(y == p))
        per = np.array([np_per_class(y, p, c) for c in range(C)])
        assert r["precision_macro"] == pytest.approx(per[:, 0].mean())
        assert r["recall_macro"] == pytest.approx(per[:, 1].mean())
        assert r["f1_macro"] == pytest.approx(per[:, 2].mean())
        assert r["f1"] == r["f1_macro"] and r["precision"] == r["precision_macro"]
        assert r["mcc"] == pytest.approx(np_mcc_from_samples(y, p, C))

    def test_perfect_and_inverted(self):
        r = metrics.classification_report(np.array([[4, 0], [0, 6]]))
        assert r["accuracy"] == r["precision"] == r["recall"] == r["f1"] == r["mcc"] == 1.0
        r = metrics.classification_report(np.array([[0, 4], [6, 0]]))
        assert r["accuracy"] == 0.0 and r["mcc"] == pytest.approx(-1.0)

    def test_degenerate(self):
        # Everything predicted as class 0: precision of class 1 undefined -> 0, MCC -> 0.
        r = metrics.classification_report(np.array([[7, 0], [3, 0]]))
        assert r["accuracy"] == pytest.approx(0.7)
        assert r["precision"] == r["recall"] == r["f1"] == r["mcc"] == 0.0
        assert r["f1_macro"] == pytest.approx((2 * 7 / (2 * 7 + 3)) / 2)
        # Only one class in labels and predictions: MCC undefined -> 0; macro over present.
        r = metrics.classification_report(np.array([[0, 0, 0], [0, 9, 0], [0, 0, 0]]))
        assert r["accuracy"] == 1.0 and r["mcc"] == 0.0
        assert r["f1_macro"] == r["precision_macro"] == 1.0
        # Empty matrix (no eval examples).
        r = metrics.classification_report(np.zeros((2, 2)))
        assert all(v == 0.0 for v in r.values())
        assert all(np.isfinite(v) for v in r.values())

    def test_report_of_jitted_sums(self):
        rng = np.random.default_rng(7)
        step = jax.jit(metrics.confusion_matrix, static_argnums=2)
        total = np.zeros((3, 3), np.float32)
        ys, ps = [], []
        for _ in range(3):
            logits = rng.normal(size=(16, 3)).astype(np.float32)
            y = rng.integers(0, 3, 16)
            total += np.asarray(step(logits, y, 3))
            ys.append(y)
            ps.append(logits.argmax(-1))
        y, p = np.concatenate(ys), np.concatenate(ps)
        assert metrics.classification_report(total)["mcc"] == pytest.approx(
            np_mcc_from_samples(y, p, 3)
        )
