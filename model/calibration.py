"""Calibrating the recognizer's confidence: temperature scaling (Guo et al. 2017) fitted on
held-out predictions, and the expected calibration error that measures it.

An event's `confidence` is the probability of its label. A network trained with a focal
loss on a few hundred clips is not calibrated by itself: its top probability need not be
the rate at which it is right. Temperature scaling divides the logits by one number T,
chosen to minimise the negative log-likelihood of held-out predictions; it never changes
which class wins, only how sure the network says it is. Since softmax(z / T) can be
computed from p = softmax(z) as p^(1/T) renormalised, it is fitted and applied on
probabilities (the LOSO folds store them; backends return them).

Fitted on: the pooled held-out predictions of a LOSO run (each subject's pairs predicted by
the fold that never saw that subject), the only predictions of the training set a network
did not learn from. The same T is then applied to the weights trained on all subjects,
whose own probabilities on training data would be overconfident.

ECE: predictions binned by confidence into `bins` equal-width bins over [0, 1]; the
weighted mean over bins of |accuracy - mean confidence|, weights the bins' shares.
"""

from __future__ import annotations

import numpy as np


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax(logits), (N, K)."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) / temperature
    e = np.exp(logp - logp.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    p = np.asarray(probs)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """The reliability diagram's data: for each of `bins` equal-width bins of the top
    class's probability that holds predictions, its range, count, accuracy and mean
    confidence."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if not len(labels):
        return []
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [
        {
            "low": b / bins,
            "high": (b + 1) / bins,
            "count": int((which == b).sum()),
            "accuracy": float(right[which == b].mean()),
            "confidence": float(confidence[which == b].mean()),
        }
        for b in range(bins)
        if (which == b).any()
    ]


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top class, `bins` equal-width bins."""
    rows = reliability(probs, labels, bins)
    if not rows:
        return float("nan")
    n = sum(r["count"] for r in rows)
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the NLL of `scale(probs, T)`: a grid over log T,
    then golden-section refinement (the NLL is smooth and unimodal in log T)."""
    grid = np.linspace(np.log(0.05), np.log(20.0), 61)
    losses = [nll(scale(probs, np.exp(g)), labels) for g in grid]
    k = int(np.argmin(losses))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(scale(probs, np.exp(a)), labels) < nll(scale(probs, np.exp(b)), labels):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def calibration_report(probs: np.ndarray, labels: np.ndarray, groups=None) -> dict:
    """T fitted on (probs, labels), with the ECE and NLL before and after. With `groups`
    (each prediction's subject), "after" is cross-fitted: each group's predictions are
    scaled by the T fitted on the other groups, so the figure is not flattered by fitting
    T on the predictions it is measured on; the T returned is the one fitted on all."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    t = fit_temperature(probs, labels)
    after = scale(probs, t)
    if groups is not None:
        groups = np.asarray(groups)
        for g in np.unique(groups):
            inside = groups == g
            if (~inside).any():
                fitted = fit_temperature(probs[~inside], labels[~inside])
                after[inside] = scale(probs[inside], fitted)
    return {
        "temperature": round(t, 4),
        "ece_before": round(ece(probs, labels), 4),
        "ece_after": round(ece(after, labels), 4),
        "nll_before": round(nll(probs, labels), 4),
        "nll_after": round(nll(after, labels), 4),
        "n": len(labels),
        "cross_fitted": groups is not None,
    }
