"""Spot-then-recognize scoring, as the MEGC 2023-2025 challenges score their STR task:
STRS = spotting F1 x recognition F1.

- Spotting: a predicted interval is a true positive when its IoU with a ground-truth
  micro-expression is at least 0.5, each ground truth matched once (greedy by IoU,
  `mfvan.model.spotting.match`); F1 = 2 TP / (2 TP + FP + FN), pooled over videos.
- Recognition: on the true positives only, the recognizer's class against the ground
  truth's: UF1 (macro F1 over `classes`, a class never predicted counting F1 = 0) and UAR
  (macro recall), as `mfvan.model.evaluate.scores` computes them for LOSO.
- STRS = spotting F1 x UF1.

Chosen where the challenge text is silent: a true positive whose ground truth has no
label in `classes` (a micro-expression outside the 3-class scheme) counts for spotting
and is left out of recognition; with no labelled true positive at all, UF1 and UAR are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfvan.model.evaluate import scores
from mfvan.model.spotting import match


@dataclass(frozen=True)
class Labelled:
    """An interval (inclusive frames) and its class (None: not one of the classes)."""

    onset: int
    offset: int
    label: str | None


def spotting_f1(tp: int, fp: int, fn: int) -> float:
    """MEGC spotting F1 from counts: 2 TP / (2 TP + FP + FN)."""
    return 2 * tp / (2 * tp + fp + fn) if tp or fp or fn else 0.0


def strs(tp: int, fp: int, fn: int, uf1: float) -> float:
    """The spot-then-recognize score: spotting F1 x recognition UF1."""
    return spotting_f1(tp, fp, fn) * uf1


def score_str(videos: list[tuple[list[Labelled], list[Labelled]]], classes: list[str]) -> dict:
    """STRS pooled over `videos`, each (predicted intervals with the recognizer's class,
    ground-truth micro-expressions with theirs): spotting counts, precision, recall and
    F1; recognition n, UF1 and UAR on the true positives; and STRS."""
    tp = fp = fn = 0
    truth_labels, predicted_labels = [], []
    for predicted, truth in videos:
        pairs = match(
            [(p.onset, p.offset) for p in predicted], [(t.onset, t.offset) for t in truth]
        )
        tp += len(pairs)
        fp += len(predicted) - len(pairs)
        fn += len(truth) - len(pairs)
        for i, j in pairs:
            if truth[j].label in classes:
                truth_labels.append(classes.index(truth[j].label))
                label = predicted[i].label
                predicted_labels.append(classes.index(label) if label in classes else -1)
    if truth_labels:
        recognition = scores(truth_labels, predicted_labels, len(classes))
    else:
        recognition = {"n": 0, "uf1": 0.0, "uar": 0.0}
    uf1 = recognition["uf1"]
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": spotting_f1(tp, fp, fn),
        "recognized": recognition["n"],
        "uf1": uf1,
        "uar": recognition["uar"],
        "strs": strs(tp, fp, fn, uf1),
    }


def bootstrap(
    videos: list[tuple[list[Labelled], list[Labelled]]],
    classes: list[str],
    reps: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals of the pooled spotting F1, UF1 and STRS, videos resampled
    with replacement (the unit that varies: a face, a recording)."""
    if not videos:
        return {k: (float("nan"), float("nan")) for k in ("f1", "uf1", "strs")}
    rng = np.random.default_rng(seed)
    draws = [
        score_str([videos[i] for i in rng.integers(0, len(videos), len(videos))], classes)
        for _ in range(reps)
    ]
    return {
        k: tuple(float(x) for x in np.percentile([d[k] for d in draws], [2.5, 97.5]))
        for k in ("f1", "uf1", "strs")
    }
