"""Faces it has never seen: the held-out protocol's families, and the shipped veto on pairs
spotted in a held-out camera-like video."""

from pathlib import Path

import numpy as np
import pytest

from mfvan.model import heldout
from mfvan.model.data import portraits, synth

FIXTURE = Path(__file__).parent / "data" / "veto-pairs.npz"


@pytest.mark.parametrize("seed", [heldout.TUNING_SEED, heldout.HELD_OUT_SEED])
def test_each_family_is_made_of_its_own_split_only(seed):
    split = "heldout" if seed == heldout.HELD_OUT_SEED else "train"
    allowed = {p.id for p in portraits.portraits(split)}
    cfg = synth.CONFIGS[heldout.PRESETS[seed]]
    used = set()
    for subject in range(1, cfg.subjects + 1):
        sources = list(synth.make_identity(cfg, subject, seed).photo.morph.sources)
        assert sources and set(sources) <= allowed, (subject, sources)
        assert synth.identity_sources(cfg, subject, seed) == sources  # what identities.csv says
        used |= set(sources)
    if split == "heldout":
        assert len(used) >= 12, "the held-out family shows at least 12 held-out portraits"


def test_the_shipped_veto_refuses_a_blink_and_a_key_frame_pulse_and_passes_a_micro_expression():
    from mfvan.deploy.backends import load_recognizer
    from mfvan.deploy.shipped import VETO_WEIGHTS

    pairs = np.load(FIXTURE)
    classify, meta = load_recognizer(VETO_WEIGHTS, "onnxruntime")
    probs = np.asarray(classify(pairs["onset"], pairs["apex"], pairs["flow"]))
    labels = [meta["classes"][int(k)] for k in probs.argmax(1)]
    kinds = list(pairs["kinds"])
    assert kinds[:2] == ["blink", "keyframe"] and kinds[2].startswith("micro:")
    assert labels[0] == "none", probs[0]
    assert labels[1] == "none", probs[1]
    assert labels[2] == kinds[2].removeprefix("micro:"), probs[2]
