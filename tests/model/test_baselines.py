"""The baselines the recognizer serves: region motion (a small classifier on the spotter's
per-region motion) and OFF-ApexNet on the same motion input."""

import numpy as np
import pytest
import torch

from mfvan.kernels.motion import LIVE_CROP
from mfvan.kernels.signals import ROIS
from mfvan.model.data.pairs import Pairs
from mfvan.model.heldout import VETO_CLASSES, train_recognizer
from mfvan.model.train import predict

# where each class moves, and which way (px of a 128 px crop, per unit of intensity)
PATTERNS = {
    "negative": {"nose": (0.0, -1.0), "brow_left": (0.4, 0.5), "brow_right": (-0.4, 0.5)},
    "positive": {"mouth_left": (-0.7, -0.7), "mouth_right": (0.7, -0.7)},
    "surprise": {"brow_left": (0.0, -1.0), "brow_right": (0.0, -1.0)},
    "others": {"chin": (0.0, -1.0)},  # AU17, chin raiser
    "none": {"eye_left": (0.0, 1.5), "eye_right": (0.0, 1.5)},  # a blink
}


def _pairs(n_per_class: int, seed: int) -> Pairs:
    """Flows with each class's pattern at a random intensity, over noise."""
    rng = np.random.default_rng(seed)
    motion, labels = [], []
    for k, name in enumerate(VETO_CLASSES):
        for _ in range(n_per_class):
            flow = rng.normal(0, 0.05, (LIVE_CROP, LIVE_CROP, 2)).astype(np.float32)
            strength = rng.uniform(0.3, 1.5)
            for region, (u, v) in PATTERNS[name].items():
                x0, y0, x1, y1 = (round(c * LIVE_CROP) for c in ROIS[region])
                flow[y0:y1, x0:x1] += strength * np.array([u, v], np.float32)
            motion.append(flow)
            labels.append(k)
    n = len(labels)
    blank = np.zeros((n, 64, 64, 1), np.uint8)
    return Pairs(
        VETO_CLASSES,
        onset=blank,
        apex=blank,
        labels=np.asarray(labels, np.int64),
        subjects=np.asarray([f"sub{i % 4:02d}" for i in range(n)]),
        names=np.asarray([str(i) for i in range(n)]),
        found=np.ones(n, bool),
        motion=np.asarray(motion, np.float16),
    )


@pytest.fixture(scope="module")
def trained():
    return train_recognizer(_pairs(30, seed=0), "region-motion")


def test_region_motion_learns_where_and_which_way_faces_move(trained):
    test = _pairs(15, seed=1)
    probs = predict(trained, test)
    accuracy = (probs.argmax(1) == test.labels).mean()
    assert accuracy >= 0.9, accuracy


def test_region_motion_ignores_the_pixels(trained):
    pairs = _pairs(2, seed=2)
    shape = (len(pairs), 1, 64, 64)
    motion = torch.zeros(len(pairs), 3, 64, 64)
    a = trained(torch.zeros(shape), torch.zeros(shape), motion)
    b = trained(torch.randn(shape), torch.randn(shape), motion)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["region-motion", "off-apexnet"])
def test_motion_baselines_round_trip_through_weights_and_export(trained, kind, tmp_path):
    from mfvan.deploy.inference.export import export_onnx, onnx_session
    from mfvan.model.weights import load_weights, save_weights

    model = trained if kind == "region-motion" else train_recognizer(_pairs(3, seed=4), kind)
    save_weights(model, tmp_path / "rm.safetensors", list(VETO_CLASSES), training_data="test")
    loaded, meta = load_weights(tmp_path / "rm.safetensors")
    assert loaded.cfg.arch == kind and type(loaded) is type(model)
    assert meta["classes"][-1] == "none"
    session = onnx_session(export_onnx(loaded, tmp_path / "rm.onnx"))
    motion = np.random.default_rng(3).normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    blank = np.zeros((2, 1, 64, 64), np.float32)
    (onnx_logits,) = session.run(None, {"onset": blank, "apex": blank, "motion": motion})
    with torch.no_grad():
        eager = loaded(torch.from_numpy(blank), torch.from_numpy(blank), torch.from_numpy(motion))
    np.testing.assert_allclose(onnx_logits, eager.numpy(), atol=1e-4)


def test_off_apexnet_served_reads_the_spot_stages_motion():
    model = train_recognizer(_pairs(30, seed=0), "off-apexnet")
    assert model.inputs == ("onset", "apex", "motion")
    test = _pairs(15, seed=1)
    accuracy = (predict(model, test).argmax(1) == test.labels).mean()
    assert accuracy >= 0.9, accuracy
