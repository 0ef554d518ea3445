"""`mfvan export`: every format a serving stack takes, each holding to the eager model."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from mfvan.deploy.inference import export
from mfvan.model.mfvan import prepare_inputs


@pytest.fixture(scope="module")
def shipped(demo_weights):
    return demo_weights


@pytest.fixture(scope="module")
def inputs(shipped):
    """The shipped network's inputs by name (its motion too), and its eager logits."""
    model, _ = shipped
    rng = np.random.default_rng(1)
    onset = rng.integers(0, 256, (5, 128, 128), dtype=np.uint8)
    apex = np.clip(onset.astype(int) + rng.integers(-8, 9, onset.shape), 0, 255).astype(np.uint8)
    named = prepare_inputs(model.cfg, onset, apex)
    with torch.no_grad():
        return named, model(*named.values()).numpy()


@pytest.mark.slow
def test_torchscript_export_matches_eager(shipped, inputs, tmp_path):
    named, expected = inputs
    path = export.export_torchscript(shipped[0], tmp_path / "mfvan.ts")
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(*named.values()).numpy(), expected, atol=1e-4)
        first = [x[:1] for x in named.values()]
        np.testing.assert_allclose(loaded(*first).numpy(), expected[:1], atol=1e-4)


@pytest.mark.slow
def test_triton_repository_is_valid_and_its_model_matches_eager(shipped, inputs, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    model, meta = shipped
    named, expected = inputs
    root = export.export_triton(
        model, tmp_path, list(meta["classes"]), export.TritonServing(max_batch=16)
    )
    config = text_format.Parse((root / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "mfvan" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(i.name, list(i.dims)) for i in config.input] == [
        ("onset", [1, 64, 64]),
        ("apex", [1, 64, 64]),
        *([("motion", [3, 64, 64])] if "motion" in named else []),
    ]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.output[0].dims) == [3] and config.output[0].name == "logits"
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    labels = (root / config.output[0].label_filename).read_text().split()
    assert labels == list(meta["classes"])
    session = export.onnx_session(root / "1" / "model.onnx")
    (logits,) = session.run(["logits"], {k: v.numpy() for k, v in named.items()})
    np.testing.assert_allclose(logits, expected, atol=1e-4)


@pytest.mark.skipif(
    importlib.util.find_spec("torch_tensorrt") is not None,
    reason="torch-tensorrt is installed: tests/deploy/test_backends.py covers the engine",
)
def test_tensorrt_export_without_tensorrt_is_one_clear_line(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mfvan.deploy.cli",
            "export",
            "--format",
            "tensorrt",
            "--out",
            str(tmp_path / "m.ep"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "torch-tensorrt is not installed" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: it would compile")
def test_an_aoti_export_for_cuda_without_a_gpu_is_one_clear_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mfvan", "export", "--format", "aoti", "--device", "cuda"]
        + ["--out", str(tmp_path / "m.pt2")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "no CUDA device is visible" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "m.pt2").exists()
