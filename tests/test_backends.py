"""Inference backends hold to the eager FP32 model: same probabilities, same interface."""

import importlib.util
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


@pytest.mark.slow
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
        # no TensorRT, no Triton server here: the next backend that runs, said why
        assert load_backend("tensorrt", model, cache_dir=cache).name.startswith("onnxruntime")
        assert load_backend("triton", model, cache_dir=cache, url="127.0.0.1:9").name.startswith(
            "onnxruntime"
        )
    assert "backend tensorrt unavailable" in caplog.text
    assert "backend triton unavailable" in caplog.text
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend("tpu", model)


def test_half_precision_and_cuda_graphs_are_refused_on_cpu(model):
    with pytest.raises(ValueError, match="need a CUDA device"):
        TorchBackend(model, precision="fp16")
    with pytest.raises(ValueError, match="need a CUDA device"):
        TorchBackend(model, cuda_graphs=True)


@pytest.mark.slow
def test_torch_compile_matches_eager_on_cpu(model, crops):
    backend = TorchBackend(model, compile=True)
    np.testing.assert_allclose(backend(*crops), _eager(model, *crops), atol=1e-5)
    assert "compiled" in backend.name


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    "kw, atol",
    [
        ({}, 1e-4),  # FP32 on the GPU: TF32 is off by default for matmuls in PyTorch
        ({"precision": "fp16"}, 2e-2),  # half precision: probabilities within 0.02
        ({"compile": True}, 1e-4),
        ({"cuda_graphs": True}, 1e-4),
        ({"cuda_graphs": True, "precision": "fp16"}, 2e-2),
    ],
)
def test_cuda_backends_hold_to_eager_fp32(model, crops, kw, atol):
    backend = TorchBackend(model, device="cuda", **kw)
    expected = _eager(model.cpu(), *crops)
    for n in (1, 5):  # 5 pads to a graph of 8 with CUDA graphs
        np.testing.assert_allclose(backend(crops[0][:n], crops[1][:n]), expected[:n], atol=atol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(
    importlib.util.find_spec("torch_tensorrt") is None,
    reason="torch-tensorrt is not installed (NVIDIA's index is out of reach here; "
    "pip install .[tensorrt] on a GPU box)",
)
def test_tensorrt_holds_to_eager_fp32_and_caches_its_engine(model, crops, tmp_path):
    from mfvan.deploy.backends import TensorRTBackend

    expected = _eager(model.cpu(), *crops)
    backend = TensorRTBackend(model, precision="fp16", cache_dir=tmp_path)
    np.testing.assert_allclose(backend(*crops), expected, atol=2e-2)
    assert len(list(tmp_path.glob("*.ep"))) == 1
    again = TensorRTBackend(model, precision="fp16", cache_dir=tmp_path)
    np.testing.assert_allclose(again(*crops), expected, atol=2e-2)
