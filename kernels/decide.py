"""The recognizer's decision, one rule for every path that publishes or scores events
(the live recognizer, `mfvan analyze`, `mfvan spot-eval` and `mfvan heldout`): the label
is the most probable class and its probability the confidence; a spot whose most probable
class is `VETO` (a model trained to refuse what is not a micro-expression) is refused
unless vetoed spots are published; one less sure than `min_confidence` is held back."""

from __future__ import annotations

import numpy as np

VETO = "none"  # the class of a model that refuses what is not a micro-expression


def decide(
    probs, classes, min_confidence: float = 0.0, publish_vetoed: bool = False
) -> tuple[str, float, str | None]:
    """(label, confidence, why it is not published: None, "vetoed" or "unsure")."""
    best = int(np.argmax(probs))
    label, confidence = classes[best], float(probs[best])
    if label == VETO:
        return label, confidence, None if publish_vetoed else "vetoed"
    if confidence < min_confidence:
        return label, confidence, "unsure"
    return label, confidence, None
