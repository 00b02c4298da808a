"""Exact classification metrics from confusion-matrix sums.

``confusion_matrix`` runs on device (inside ``eval_step``); its [C,C] counts add up
exactly across batches, steps and hosts. ``classification_report`` turns the summed
matrix into metrics on the host, matching scikit-learn's definitions.
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(logits_or_preds, labels, num_classes, weights=None):
    """[C,C] float32 weighted counts; row = true label, column = prediction (sklearn).

    ``logits_or_preds`` is either logits [..., C] (argmax taken) or integer predictions
    with the shape of ``labels`` [...]. ``weights`` [...] (e.g. the eval ``weight``, 0 on
    padding rows) default to 1. Labels or predictions outside [0, C) are not counted.
    """
    labels = jnp.asarray(labels)
    preds = jnp.asarray(logits_or_preds)
    if preds.ndim == labels.ndim + 1:
        preds = jnp.argmax(preds, axis=-1)
    w = jnp.ones(labels.shape, jnp.float32) if weights is None else jnp.asarray(weights)
    w = jnp.broadcast_to(w.astype(jnp.float32), labels.shape).reshape(-1)
    true_ExC = jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=jnp.float32)
    pred_ExC = jax.nn.one_hot(preds.reshape(-1), num_classes, dtype=jnp.float32)
    # HIGHEST: on TPU the default precision would round float weights to bfloat16.
    return jnp.einsum(
        "nc,nd->cd", true_ExC * w[:, None], pred_ExC, precision=jax.lax.Precision.HIGHEST
    )


def _div(a, b):
    # sklearn's zero_division=0: an undefined ratio is 0.
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    out = np.zeros_like(a)
    np.divide(a, b, out=out, where=b != 0)
    return out


def classification_report(confusion):
    """Host-side metrics from a (summed) confusion matrix [C,C] (row = true).

    Returns a dict of Python floats:
      accuracy; precision_macro, recall_macro, f1_macro (unweighted means over the classes
        that occur in labels or predictions, sklearn's default label set);
      precision, recall, f1: of the positive class 1 when C == 2 (sklearn's binary
        average), else the macro values;
      mcc: Matthews correlation, Gorodkin's multiclass R_K (equal to the binary MCC when
        C == 2), 0 when undefined as in sklearn;
      count: total weight.
    Undefined ratios (zero denominators) count as 0, as sklearn's zero_division=0.
    """
    cm = np.asarray(confusion, np.float64)
    C = cm.shape[0]
    tp = np.diag(cm)
    true_c = cm.sum(axis=1)  # support
    pred_c = cm.sum(axis=0)
    total = cm.sum()
    precision_c = _div(tp, pred_c)
    recall_c = _div(tp, true_c)
    # 2tp / (2tp + fp + fn): the harmonic mean of P and R, 0 where it is undefined.
    f1_c = _div(2 * tp, true_c + pred_c)
    present = (true_c + pred_c) > 0
    macro = lambda v: float(v[present].mean()) if present.any() else 0.0

    # Gorodkin (2004): (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)).
    cov_tp = tp.sum() * total - true_c @ pred_c
    cov_pp = total**2 - pred_c @ pred_c
    cov_tt = total**2 - true_c @ true_c
    denom = np.sqrt(cov_pp * cov_tt)
    mcc = float(cov_tp / denom) if denom > 0 else 0.0

    report = {
        "accuracy": float(_div(tp.sum(), total)),
        "precision_macro": macro(precision_c),
        "recall_macro": macro(recall_c),
        "f1_macro": macro(f1_c),
        "mcc": mcc,
        "count": float(total),
    }
    if C == 2:
        report.update(precision=float(precision_c[1]), recall=float(recall_c[1]), f1=float(f1_c[1]))
    else:
        report.update(
            precision=report["precision_macro"],
            recall=report["recall_macro"],
            f1=report["f1_macro"],
        )
    return report
