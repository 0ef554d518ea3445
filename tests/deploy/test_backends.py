"""Inference backends hold to the eager FP32 model: same probabilities, same interface;
for the network without the motion input and with it (fed the spot stage's flow)."""

import importlib.util
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from mfvan.deploy.inference.backends import (
    Calibrated,
    OnnxRuntimeBackend,
    TorchBackend,
    load_backend,
    model_digest,
)
from mfvan.model.mfvan import CONFIGS, MFVAN, prepare_inputs


@pytest.fixture(scope="module", params=["none", "both"], ids=["no-motion", "motion"])
def model(request):
    torch.manual_seed(0)
    return MFVAN(replace(CONFIGS["tiny"], motion=request.param)).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One ONNX export cache for the module: exporting takes seconds."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def crops():
    """Onset and apex crops and their flow, as the spot stage sends them."""
    from mfvan.kernels.motion import wire_flow

    rng = np.random.default_rng(0)
    onset = rng.integers(0, 256, (5, 128, 128), dtype=np.uint8)
    apex = np.clip(onset.astype(int) + rng.integers(-8, 9, onset.shape), 0, 255).astype(np.uint8)
    flow = np.stack([wire_flow(a, b) for a, b in zip(onset, apex, strict=True)])
    return onset, apex, flow


def _eager(model, onset, apex, flow):
    with torch.no_grad():
        logits = model(*prepare_inputs(model.cfg, onset, apex, flow).values())
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
    exports = set(cache.glob("*.onnx"))
    assert cache / f"mfvan-{model_digest(model)}.onnx" in exports, "cached by model hash"
    OnnxRuntimeBackend(model, cache_dir=cache)
    assert set(cache.glob("*.onnx")) == exports, "and not exported again"


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


def test_a_calibrated_backend_keeps_the_class_and_softens_the_probabilities(model, crops):
    plain = TorchBackend(model)
    soft = Calibrated(plain, 2.0)
    p, q = plain(*crops), soft(*crops)
    assert soft.name == plain.name and (p.argmax(1) == q.argmax(1)).all()
    assert (q.max(1) <= p.max(1) + 1e-6).all(), "T > 1: less sure"
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)
    assert Calibrated(plain, 1.0)(*crops) is not None


def test_a_motion_model_computes_the_flow_a_pair_came_without(model, crops):
    """A pair from an older spot stage has no flow: the backend computes the same one."""
    if model.cfg.motion == "none":
        pytest.skip("the network without the motion input takes no flow")
    backend = TorchBackend(model)
    np.testing.assert_allclose(backend(*crops[:2]), backend(*crops), atol=1e-3)


def test_half_precision_and_cuda_graphs_are_refused_on_cpu(model):
    with pytest.raises(ValueError, match="need a CUDA device"):
        TorchBackend(model, precision="fp16")
    with pytest.raises(ValueError, match="need a CUDA device"):
        TorchBackend(model, cuda_graphs=True)


def _in_a_child(tmp_path, model, crops, code: str) -> dict:
    """Runs `code` in a fresh Python with `model` (its config and weights) and `crops`
    loaded as `model` and `crops`; returns what it put in the dict `out`. Compiling with
    TorchInductor starts compile workers, OpenMP threads and loads compiled libraries into
    the process: kept out of the test process, which goes on to run every other test."""
    import subprocess
    import sys

    torch.save({"cfg": model.cfg, "state": model.state_dict(), "crops": crops}, tmp_path / "in.pt")
    script = (
        "import torch\n"
        "from mfvan.model.mfvan import MFVAN\n"
        "given = torch.load('in.pt', weights_only=False)\n"
        "model = MFVAN(given['cfg']).eval()\n"
        "model.load_state_dict(given['state'])\n"
        "crops, out = given['crops'], {}\n"
        f"{code}\n"
        "torch.save(out, 'out.pt')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "out.pt", weights_only=False)


@pytest.mark.slow
def test_torch_compile_matches_eager_on_cpu(model, crops, tmp_path):
    got = _in_a_child(
        tmp_path,
        model,
        crops,
        "from mfvan.deploy.inference.backends import TorchBackend\n"
        "backend = TorchBackend(model, compile=True)\n"
        "out['probs'], out['name'] = backend(*crops), backend.name",
    )
    np.testing.assert_allclose(got["probs"], _eager(model, *crops), atol=1e-5)
    assert "compiled" in got["name"]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    "kw, atol",
    [
        ({}, 1e-4),  # FP32 on the GPU: TF32 is off by default for matmuls in PyTorch
        ({"precision": "fp16"}, 2e-2),  # half precision: probabilities within 0.02
        ({"precision": "bf16"}, 2e-2),
        ({"compile": True}, 1e-4),
        ({"compile_mode": "max-autotune"}, 1e-4),
        ({"cuda_graphs": True}, 1e-4),
        ({"cuda_graphs": True, "precision": "fp16"}, 2e-2),
    ],
)
def test_cuda_backends_hold_to_eager_fp32(model, crops, kw, atol):
    backend = TorchBackend(model, device="cuda", **kw)
    many = tuple(np.concatenate([x] * 7)[:32] for x in crops)  # 32 pairs
    expected = _eager(model.cpu(), *many)
    for n in (1, 5, 8, 32):  # with CUDA graphs: the graphs of 1, 8 and 32 (5 pads to 8)
        got = backend(*(x[:n] for x in many))
        np.testing.assert_allclose(got, expected[:n], atol=atol)


@pytest.mark.slow
def test_an_aoti_package_runs_without_the_models_code_and_matches_eager(crops, tmp_path):
    """`mfvan export --format aoti`'s package, loaded in a process that imports torch and
    nothing of mfvan, gives eager's logits; the `aoti` backend gives eager's
    probabilities at batch 1 and 5. (The network with the motion input: compiling takes
    a minute and a half here, so once; compiled and run in child processes.)"""
    import subprocess
    import sys

    torch.manual_seed(0)
    model = MFVAN(replace(CONFIGS["tiny"], motion="both")).eval()
    got = _in_a_child(
        tmp_path,
        model,
        crops,
        "from mfvan.deploy.inference.backends import AotiBackend\n"
        "from mfvan.deploy.inference.export import export_aoti\n"
        "package = export_aoti(model, 'mfvan.pt2')\n"
        "backend = AotiBackend(model, package=package)\n"
        "out['probs'] = [backend(*(x[:n] for x in crops)) for n in (1, 5)]\n"
        "out['name'], out['package'] = backend.name, str(package)",
    )
    inputs = tuple(prepare_inputs(model.cfg, *crops).values())
    torch.save(inputs, tmp_path / "inputs.pt")
    code = (
        "import sys, torch\n"
        "from torch._inductor import aoti_load_package\n"
        f"run = aoti_load_package({got['package']!r})\n"
        "logits = run(*torch.load('inputs.pt'))\n"
        "assert not [m for m in sys.modules if m.startswith('mfvan')], 'no mfvan code'\n"
        "torch.save(logits, 'logits.pt')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    with torch.no_grad():
        eager = model(*inputs)
    np.testing.assert_allclose(torch.load(tmp_path / "logits.pt"), eager, atol=1e-4)
    for n, probs in zip((1, 5), got["probs"], strict=True):
        np.testing.assert_allclose(probs, _eager(model, *crops)[:n], atol=1e-4)
    assert got["name"] == "aoti (cpu)"


@pytest.mark.gpu
@needs_cuda
def test_an_aoti_package_for_cuda_holds_to_eager_fp32(crops, tmp_path):
    from mfvan.deploy.inference.backends import AotiBackend

    torch.manual_seed(0)
    model = MFVAN(replace(CONFIGS["tiny"], motion="both")).eval()  # one compile
    backend = AotiBackend(model, device="cuda", cache_dir=tmp_path)
    np.testing.assert_allclose(backend(*crops), _eager(model.cpu(), *crops), atol=1e-4)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(
    importlib.util.find_spec("torch_tensorrt") is None,
    reason="torch-tensorrt is not installed (NVIDIA's index is out of reach here; "
    "pip install .[tensorrt] on a GPU box)",
)
def test_tensorrt_holds_to_eager_fp32_and_caches_its_engine(model, crops, tmp_path):
    from mfvan.deploy.inference.backends import TensorRTBackend

    expected = _eager(model.cpu(), *crops)
    backend = TensorRTBackend(model, precision="fp16", cache_dir=tmp_path)
    np.testing.assert_allclose(backend(*crops), expected, atol=2e-2)
    assert len(list(tmp_path.glob("*.ep"))) == 1
    again = TensorRTBackend(model, precision="fp16", cache_dir=tmp_path)
    np.testing.assert_allclose(again(*crops), expected, atol=2e-2)
