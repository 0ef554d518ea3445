"""Inference backends hold to the eager FP32 model: same probabilities, same interface."""

import logging

import numpy as np
import pytest
import torch

from mfvan.deploy.backends import OnnxRuntimeBackend, TorchBackend, load_backend, model_digest
from mfvan.model.mfvan import CONFIGS, MFVAN, preprocess


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MFVAN(CONFIGS["tiny"]).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One ONNX export cache for the module: exporting takes seconds."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    onset = rng.integers(0, 256, (5, 128, 128), dtype=np.uint8)
    apex = np.clip(onset.astype(int) + rng.integers(-8, 9, onset.shape), 0, 255).astype(np.uint8)
    return onset, apex


def _eager(model, onset, apex):
    with torch.no_grad():
        logits = model(preprocess(onset, model.cfg), preprocess(apex, model.cfg))
    return torch.softmax(logits, 1).numpy()


def test_torch_backend_is_the_eager_model(model, crops):
    probs = TorchBackend(model)(*crops)
    assert probs.shape == (5, model.cfg.num_classes) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, _eager(model, *crops), atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_onnxruntime_backend_matches_eager_within_1e4(model, crops, cache):
    backend = OnnxRuntimeBackend(model, cache_dir=cache)
    np.testing.assert_allclose(backend(*crops), _eager(model, *crops), atol=1e-4)
    assert len(list(cache.glob("*.onnx"))) == 1, "the export is cached by model hash"
    OnnxRuntimeBackend(model, cache_dir=cache)
    assert len(list(cache.glob("*.onnx"))) == 1
    assert f"mfvan-{model_digest(model)}.onnx" in {p.name for p in cache.iterdir()}


def test_load_backend_names_what_runs_and_falls_back(model, cache, caplog):
    with caplog.at_level(logging.INFO, logger="mfvan.backends"):
        assert load_backend("onnxruntime", model, cache_dir=cache).name.startswith("onnx")
        assert load_backend("tensorrt", model).name == "torch on cpu"
    assert "falling back to torch" in caplog.text
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend("tpu", model)
