"""Inference backends: one interface, chosen by name, falling back with a clear log line.

A backend takes a batch of (onset, apex) uint8 face crops, (B, H, W) grey or (B, H, W, 3)
RGB, as the spotter emits them, and returns class probabilities (B, classes) as float32.
Each does the network's own preprocessing (`mfvan.model.mfvan.preprocess`) first.

- `torch`: eager PyTorch on CPU or CUDA; `compile=True` wraps the model in `torch.compile`.
- `onnxruntime`: the model exported to ONNX (`mfvan.deploy.export`), run by ONNX Runtime
  on the CPU (or CUDA when its provider is installed). The export is cached next to the
  weights' hash, in `~/.cache/mfvan/onnx` unless `cache_dir` says otherwise.
- `tensorrt`: the next issue; asking for it now falls back to `torch`.

`load_backend("onnxruntime", ...)` falls back to `torch` when ONNX Runtime is missing;
every fallback is logged with its reason, so an operator sees what runs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from mfvan.model.mfvan import preprocess

log = logging.getLogger("mfvan.backends")
NAMES = ("torch", "onnxruntime", "tensorrt")


class TorchBackend:
    name = "torch"

    def __init__(self, model, device: str = "cpu", compile: bool = False):
        self.model = model.to(device).eval()
        self.cfg = model.cfg
        self.device = device
        self.forward = torch.compile(self.model) if compile else self.model
        self.name = "torch" + (" (compiled)" if compile else "") + f" on {device}"

    def __call__(self, onset: np.ndarray, apex: np.ndarray) -> np.ndarray:
        a = preprocess(onset, self.cfg).to(self.device)
        b = preprocess(apex, self.cfg).to(self.device)
        with torch.inference_mode():
            return torch.softmax(self.forward(a, b), dim=1).float().cpu().numpy()


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model, cache_dir: Path | None = None, threads: int | None = None):
        import onnxruntime as ort

        from mfvan.deploy.export import export_onnx

        self.cfg = model.cfg
        cache = Path(cache_dir or Path.home() / ".cache" / "mfvan" / "onnx")
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"mfvan-{model_digest(model)}.onnx"
        if not path.exists():
            export_onnx(model.eval(), path.with_suffix(".tmp.onnx")).rename(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.name = f"onnxruntime ({self.session.get_providers()[0]})"

    def __call__(self, onset: np.ndarray, apex: np.ndarray) -> np.ndarray:
        feed = {
            "onset": preprocess(onset, self.cfg).numpy(),
            "apex": preprocess(apex, self.cfg).numpy(),
        }
        logits = self.session.run(["logits"], feed)[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def model_digest(model) -> str:
    """A short hash of the model's config and weights: the export cache's key."""
    h = hashlib.sha256(repr(model.cfg).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_backend(
    name: str,
    model,
    device: str = "cpu",
    compile: bool = False,
    cache_dir: Path | None = None,
    threads: int | None = None,
):
    """The backend `name` for `model`, or the best available one, logged."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose from {NAMES}")
    if name == "tensorrt":
        log.warning("backend tensorrt: not available in this build; falling back to torch")
        name = "torch"
    if name == "onnxruntime":
        try:
            backend = OnnxRuntimeBackend(model, cache_dir=cache_dir, threads=threads)
        except ImportError as e:
            log.warning("backend onnxruntime unavailable (%s); falling back to torch", e)
        else:
            log.info("backend: %s", backend.name)
            return backend
    backend = TorchBackend(model, device=device, compile=compile)
    log.info("backend: %s", backend.name)
    return backend
