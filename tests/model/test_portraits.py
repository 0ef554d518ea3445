"""Real faces that are nobody: the shipped portraits, their landmarks, morphs, and the split
between training and held-out identities that nothing trained may cross."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mfvan.kernels.faces import FaceDetector, to_grey
from mfvan.model.data import portraits, synth
from mfvan.model.data.synth_face import morph_identity

DOCS = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"
TINY_MORPH = replace(
    synth.CONFIGS["tiny"], identities="morph-train", skin_detail=0.5, long_seconds=2.0
)

# Checked once by eye on a 3x enlargement (the eye centres are the mean of each eye's six
# points): where the landmark model must place these points, in the portrait's pixels.
CHECKED_POINTS = {
    "000018": {
        "eye_left": (67.2, 63.3),
        "eye_right": (95.8, 58.3),
        "nose_tip": (81.0, 79.0),
        "mouth_left": (75.0, 94.0),
        "mouth_right": (98.0, 90.0),
    },
    "000270": {
        "eye_left": (62.8, 98.2),
        "eye_right": (88.8, 97.5),
        "nose_tip": (75.0, 116.0),
        "mouth_left": (64.0, 126.0),
        "mouth_right": (89.0, 125.0),
    },
}


def test_every_shipped_portrait_is_the_file_its_manifest_names():
    portraits.verify()
    on_disk = {p.name for p in portraits.PORTRAIT_DIR.glob("*.jpg")}
    assert on_disk == {p.path.name for p in portraits.portraits()}


def test_every_shipped_image_has_a_licence_row_with_its_checksum():
    text = DOCS.read_text()
    for p in portraits.portraits():
        row = re.search(rf"^\| {p.id} \|.*$", text, re.M)
        assert row, f"docs/datasets.md has no licence row for portrait {p.id}"
        assert p.sha256 in row.group(0)
        assert "public domain" in row.group(0).lower()
    # the one other photograph SynthME uses, and the landmark model
    assert "grace_hopper.jpg" in text
    assert "shape_predictor_68_face_landmarks" in text


def test_the_split_is_disjoint_and_large_enough():
    train = {p.id for p in portraits.portraits("train")}
    held = {p.id for p in portraits.portraits("heldout")}
    assert len(train) >= 40 and len(held) >= 12
    assert not train & held


def test_a_morph_uses_portraits_of_its_own_split_only():
    for split in portraits.SPLITS:
        allowed = {p.id for p in portraits.portraits(split)}
        for subject in range(1, 41):
            recipe = portraits.MorphRecipe.draw(split, subject, seed=subject % 3)
            assert 2 <= len(recipe.sources) <= 3
            assert set(recipe.sources) <= allowed
            assert max(recipe.shape_weights) < 1 and max(recipe.texture_weights) < 1


def test_the_landmark_model_places_eyes_nose_tip_and_mouth_corners():
    pytest.importorskip("dlib", reason="the landmark model needs dlib (pip install dlib-bin)")
    for pid, expected in CHECKED_POINTS.items():
        points = portraits.landmarks_from_image(portraits.image(pid))
        left, right = points[portraits.EYE_R].mean(0), points[portraits.EYE_L].mean(0)
        found = {
            "eye_left": left,
            "eye_right": right,
            "nose_tip": points[portraits.NOSE_TIP],
            "mouth_left": points[portraits.MOUTH_CORNER_R],
            "mouth_right": points[portraits.MOUTH_CORNER_L],
        }
        for name, (x, y) in expected.items():
            assert np.hypot(*(found[name] - (x, y))) <= 3.0, (pid, name, found[name])
        # and the shipped landmarks are the model's
        assert np.abs(portraits.landmarks(pid) - points).max() <= 0.1


def test_a_morph_identity_renders_a_face_the_detector_finds_where_its_landmarks_say():
    cfg = synth.CONFIGS["morph"]
    renderer = synth.SubjectRenderer(3, 0, cfg)
    frame = renderer.render(synth.FrameState({}), noise=False)
    box = FaceDetector().detect(to_grey(frame))
    assert box is not None
    place = renderer.placement
    eye_y = place.cy + renderer.identity.eye_y * place.h
    assert box.x < place.cx < box.x + box.w and box.y < eye_y < box.y + box.h


def test_the_same_subject_and_seed_make_the_same_morph_and_other_seeds_others():
    def sources(seed):
        return morph_identity(2, seed, "train").photo.morph.sources

    assert sources(0) == sources(0)
    others = {sources(s) for s in range(6)}
    assert len(others) > 1


def test_training_refuses_a_set_whose_identities_use_held_out_portraits(tmp_path):
    from mfvan.model import pipeline

    held = replace(TINY_MORPH, identities="morph-heldout")
    synth.write_clips(held, tmp_path / "held" / "clips", seed=0, workers=1, progress=False)
    with pytest.raises(ValueError, match="held-out portrait"):
        pipeline.load("synthme", tmp_path / "held", "3class", "tiny")
    synth.write_clips(TINY_MORPH, tmp_path / "train" / "clips", seed=0, workers=1, progress=False)
    data, _ = pipeline.load("synthme", tmp_path / "train", "3class", "tiny")
    assert len(data.samples) > 0
    sources = synth.read_identity_sources(tmp_path / "train")
    assert sources and all(len(v) >= 2 for v in sources.values())


def test_spotted_training_pairs_refuse_held_out_long_videos(tmp_path):
    from mfvan.model.spotting import spotted_pairs

    held = replace(TINY_MORPH, identities="morph-heldout")
    synth.write_long_videos(held, tmp_path / "long", seed=0, workers=1, progress=False)
    with pytest.raises(ValueError, match="held-out portrait"):
        spotted_pairs(tmp_path / "long", ("negative", "positive", "surprise"), 32)


def test_the_shipped_portraits_are_a_few_small_files():
    sizes = [p.path.stat().st_size for p in portraits.portraits()]
    assert len(sizes) <= 100 and sum(sizes) < 1_000_000
