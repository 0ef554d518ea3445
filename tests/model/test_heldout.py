"""Faces it has never seen: the held-out protocol's families, and the shipped veto on pairs
spotted in a held-out camera-like video."""

from pathlib import Path

import numpy as np
import pytest

from mfvan.model import heldout
from mfvan.model.data import portraits, synth

FIXTURE = Path(__file__).parents[1] / "data" / "veto-pairs.npz"


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


def test_the_shipped_veto_refuses_blinks_and_key_frame_pulses_and_passes_micro_expressions():
    """On pairs spotted in held-out H.264 CRF 23 video at 200 and 30 fps (the first three
    of each kind in each cell, `heldout.write_veto_fixture`): at least two of three of the
    blinks and of the key-frame pulses are refused (`none`), and at least five of six
    micro-expressions pass with their own label."""
    from mfvan.deploy.inference.backends import load_recognizer
    from mfvan.deploy.shipped import VETO_WEIGHTS

    pairs = np.load(FIXTURE)
    classify, meta = load_recognizer(VETO_WEIGHTS, "onnxruntime")
    probs = np.asarray(classify(pairs["onset"], pairs["apex"], pairs["flow"]))
    labels = [meta["classes"][int(k)] for k in probs.argmax(1)]
    kinds = [str(k) for k in pairs["kinds"]]
    assert len(kinds) == 18 and {k.split(":")[0] for k in kinds} == set(heldout.FIXTURE_KINDS)
    outcome = {"blink": [], "keyframe": [], "micro": []}
    for kind, label, name in zip(kinds, labels, pairs["names"], strict=True):
        kind, _, truth = kind.partition(":")
        outcome[kind].append((label == (truth or "none"), f"{name}: {label}"))
    for kind, results in outcome.items():
        right = sum(ok for ok, _ in results)
        assert len(results) == 6
        assert right >= (5 if kind == "micro" else 4), (kind, results)


def _scores(strs: float) -> dict:
    ci = {"uf1": (0.8, 0.9), "strs": (strs - 0.05, strs + 0.05)}
    return {
        **dict(tp=9, fp=1, fn=1, f1=0.9, uf1=0.9, recognized=8, uar=0.9, strs=strs, ci=ci),
        **dict(ece=0.05, ece_spotted=0.04, false_per_minute=0.5, vetoed=2),
        "reliability": [
            {"low": 0.8, "high": 0.9, "count": 8, "accuracy": 0.875, "confidence": 0.85}
        ],
    }


def test_the_docs_section_shows_every_model_side_by_side_and_their_reliability(tmp_path):
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nkept\n\n{heldout.MARK_BEGIN}\nold\n{heldout.MARK_END}\nafter\n")
    results = {
        f"{name}.safetensors": {
            "version": name,
            "classes": [*heldout.CLASSES, *(["none"] if veto else [])],
            "200fps/ffv1": {"before": _scores(0.7), "after": _scores(strs)},
        }
        for name, veto, strs in (("plain", False, 0.6), ("vetoed", True, 0.8))
    }
    heldout.write_docs(results, page, took="1 s")
    text = page.read_text()
    assert text.startswith("# Results\n\nkept") and text.endswith("after\n")
    assert "\nold\n" not in text
    # the summary shows each model as published: without a veto its "before", else "after"
    assert "| plain | 0.700 / 0.900 / 0.50 / 0.050 / 0.040 |" in text
    assert "| vetoed | 0.800 / 0.900 / 0.50 / 0.050 / 0.040 |" in text
    assert (tmp_path / "images" / "heldout-reliability.png").stat().st_size > 1000
