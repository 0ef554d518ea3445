"""The `triton` backend against a real Triton Inference Server on this CPU: the
`tritonserver` binary of the nvidia-pytriton wheel (fetched once into ~/.cache/mfvan), with
`mfvan export --format triton`'s repository served by a Python-backend model running the
same ONNX graph (tests/servers/triton_model.py)."""

import ctypes.util
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port

from mfvan.deploy.inference import export
from mfvan.deploy.inference.backends import BackendUnavailable, TorchBackend, TritonBackend
from mfvan.model.mfvan import CONFIGS, MFVAN

PYTRITON = "nvidia-pytriton==0.7.0"
CACHE = Path.home() / ".cache" / "mfvan" / "pytriton"
MODEL_PY = Path(__file__).parents[1] / "servers" / "triton_model.py"

pytestmark = pytest.mark.slow


def _tritonserver() -> Path:
    """The unpacked wheel's tritonserver, fetched with pip the first time."""
    root = CACHE / "pytriton" / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        got = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                PYTRITON,
                "--no-deps",
                "-q",
                "-d",
                str(CACHE),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        wheels = list(CACHE.glob("nvidia_pytriton-*.whl"))
        if got.returncode or not wheels:
            pytest.skip(f"cannot fetch {PYTRITON} for its tritonserver: {got.stderr[-300:]}")
        zipfile.ZipFile(wheels[0]).extractall(CACHE)
        for f in [root / "bin" / "tritonserver", *root.glob("python_backend_stubs/*/*")]:
            f.chmod(0o755)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        pytest.skip(f"the pytriton wheel has no Python backend stub for Python {version}")
    shutil.copy(stub, root / "backends" / "python" / stub.name)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_weights):
    if sys.platform != "linux":
        pytest.skip("the pytriton wheel's tritonserver is a Linux binary")
    root = _tritonserver()
    model, meta = demo_weights
    repo = tmp_path_factory.mktemp("triton")
    folder = export.export_triton(
        model, repo, list(meta["classes"]), export.TritonServing(kind="KIND_CPU")
    )
    config = folder / "config.pbtxt"
    config.write_text(
        config.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"')
    )
    shutil.copy(MODEL_PY, folder / "1" / "model.py")
    (folder / "1" / "site-packages.txt").write_text("\n".join(site.getsitepackages()))
    port = free_port()
    # the stub embeds libpython of this Python version: the system's if it has one (with
    # its standard library), else this interpreter's
    libs = [str(CACHE / "nvidia_pytriton.libs")]
    if not ctypes.util.find_library(f"python{sys.version_info.major}.{sys.version_info.minor}"):
        libs.append(sysconfig.get_config_var("LIBDIR"))
    proc = subprocess.Popen(
        [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={root / 'backends'}",
            "--http-address=127.0.0.1",
            f"--http-port={port}",
            "--allow-grpc=false",
            "--allow-metrics=false",
        ],
        env={"LD_LIBRARY_PATH": ":".join(libs), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/mfvan/ready", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        errors = "\n".join(line for line in proc.stdout.read().splitlines() if line[:1] == "E")
        if "ImportError" in errors or "ModuleNotFoundError" in errors:
            pytest.skip(
                "the Python backend stub's embedded interpreter cannot import this "
                f"environment's numpy/onnxruntime: {errors[-300:]}"
            )
        pytest.fail("tritonserver did not serve the model: " + errors[-3000:])
    yield f"127.0.0.1:{port}", model
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a server that will not stop is stopped
        proc.kill()
        proc.wait(timeout=30)


def test_the_triton_backend_holds_to_eager(server):
    url, model = server
    rng = np.random.default_rng(0)
    onset = rng.integers(0, 256, (5, 128, 128), dtype=np.uint8)
    apex = np.clip(onset.astype(int) + rng.integers(-9, 9, onset.shape), 0, 255).astype(np.uint8)
    backend = TritonBackend(model, url=url)
    expected = TorchBackend(model)(onset, apex)
    np.testing.assert_allclose(backend(onset, apex), expected, atol=1e-5)
    np.testing.assert_allclose(backend(onset[:1], apex[:1]), expected[:1], atol=1e-5)


def test_a_model_of_another_size_is_refused_by_name(server):
    url, _ = server
    with pytest.raises(BackendUnavailable, match="takes \\{'onset': \\[1, 64, 64\\]"):
        TritonBackend(MFVAN(CONFIGS["tiny"]), url=url)
