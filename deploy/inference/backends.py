"""Inference backends: one interface, chosen by name, falling back with a clear log line.

A backend takes a batch of (onset, apex) uint8 face crops, (B, H, W) grey or (B, H, W, 3)
RGB, as the spotter emits them, and, for a model with the motion input, their onset-to-apex
flow (B, H, W, 2) as the spot stage sends it (computed from the crops when not given), and
returns class probabilities (B, classes) as float32. Each does the network's own
preprocessing (`mfvan.model.mfvan.prepare_inputs`) first and feeds the network its inputs
by name (`MFVANConfig.inputs`).

- `torch`: eager PyTorch on CPU or CUDA; FP16 or BF16 autocast on CUDA, `torch.compile`, CUDA
  graphs for fixed batch sizes.
- `onnxruntime`: the model exported to ONNX (`mfvan.deploy.inference.export`), run by ONNX Runtime
  on the CPU (or CUDA when its provider is installed). The export is cached next to the
  weights' hash, in `~/.cache/mfvan/onnx` unless `cache_dir` says otherwise.
- `aoti`: an AOTInductor package, compiled ahead of time for the CPU or CUDA and run
  without the model's Python code (`AotiBackend`).
- `tensorrt`: torch-tensorrt engines, FP16, cached on disk (unverified: see the class).
- `triton`: a Triton Inference Server serving the exported model, via `tritonclient`.

Every backend satisfies `Backend` and has one entry in `REGISTRY`: its constructor from a
model and `Options`, and the backends to fall back to, in order. The recognizer's
`--backend` choices, `load_backend` and `mfvan bench backends` all read it, so a new
backend is one class and one entry. `load_backend` falls back when a backend cannot run
here (a library, a GPU or a server missing): tensorrt and triton to onnxruntime,
onnxruntime to torch; every fallback is logged with its reason, so an operator sees what
runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mfvan.deploy.inference.choices import BACKENDS, PRECISIONS
from mfvan.model.mfvan import prepare_inputs
from mfvan.stream.recognizer import Backend  # noqa: F401  (what the recognizer calls)

log = logging.getLogger("mfvan.backends")

# Batch sizes engines are built and CUDA graphs captured for; a batch is padded up to the
# next one (pairs are few: a padded batch costs less than a graph or engine per size).
BATCH_SIZES = (1, 8, 32)


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (library, device or server missing)."""


@dataclass(frozen=True)
class Options:
    """How to build a backend; each reads the options that apply to it."""

    device: str = "cpu"  # torch
    compile: bool = False  # torch: torch.compile
    cache_dir: Path | None = None  # onnxruntime, tensorrt: where exports are cached
    threads: int | None = None  # onnxruntime: intra-op threads
    precision: str | None = None  # torch, tensorrt (None: fp32 for torch, fp16 for tensorrt)
    cuda_graphs: bool = False  # torch on CUDA
    url: str = "127.0.0.1:8000"  # triton: the server's HTTP address
    compile_mode: str | None = None  # torch: torch.compile's mode ("max-autotune", ...)
    package: Path | None = None  # aoti: a package to load (default: compiled and cached)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _cache_file(cache_dir: Path | None, kind: str, name: str) -> Path:
    """Where a backend keeps what it builds for a model (`name`, keyed by the model's hash
    and what else the build depends on): `cache_dir`, or ~/.cache/mfvan/KIND, made."""
    cache = Path(cache_dir or Path.home() / ".cache" / "mfvan" / kind)
    cache.mkdir(parents=True, exist_ok=True)
    return cache / name


def _padded(n: int) -> int:
    """The batch size to run `n` pairs at: the next of BATCH_SIZES (or n past the last)."""
    return next((b for b in BATCH_SIZES if b >= n), n)


class TorchBackend:
    """Eager PyTorch on CPU or CUDA. `precision="fp16"` or `"bf16"` runs under CUDA
    autocast (CUDA only: half-precision matmuls on CPU are slow or missing); `compile`
    wraps the model in `torch.compile` (`compile_mode`: its mode, e.g. "max-autotune");
    `cuda_graphs` compiles with `mode="reduce-overhead"`, which captures a CUDA graph per
    input shape, and pads every batch to one of BATCH_SIZES so that at most three graphs
    exist."""

    name = "torch"

    def __init__(
        self,
        model,
        device: str = "cpu",
        compile: bool = False,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        compile_mode: str | None = None,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        cuda = str(device).startswith("cuda")
        if (precision != "fp32" or cuda_graphs) and not cuda:
            raise ValueError("fp16, bf16 and CUDA graphs need a CUDA device (--device cuda)")
        if cuda and not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device is visible to PyTorch")
        self.model = model.to(device).eval()
        self.cfg = model.cfg
        self.device = device
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        if cuda_graphs:
            self.forward = torch.compile(self.model, mode="reduce-overhead")
        elif compile or compile_mode:
            self.forward = torch.compile(self.model, mode=compile_mode)
        else:
            self.forward = self.model
        compiled = [f"compiled {compile_mode or ''}".strip()] if compile or compile_mode else []
        extras = [precision] + compiled + (["CUDA graphs"] * cuda_graphs)
        self.name = f"torch on {device} ({', '.join(extras)})"

    def __call__(self, onset: np.ndarray, apex: np.ndarray, flow=None) -> np.ndarray:
        n = len(onset)
        inputs = [x.to(self.device) for x in prepare_inputs(self.cfg, onset, apex, flow).values()]
        if self.cuda_graphs and _padded(n) != n:
            pad = _padded(n) - n
            inputs = [torch.cat([x, x[-1:].expand(pad, -1, -1, -1)]) for x in inputs]
        with (
            torch.inference_mode(),
            torch.autocast(
                "cuda",
                dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16,
                enabled=self.precision != "fp32",
            ),
        ):
            logits = self.forward(*inputs)
        return torch.softmax(logits[:n].float(), dim=1).cpu().numpy()


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model, cache_dir: Path | None = None, threads: int | None = None):
        import onnxruntime as ort

        from mfvan.deploy.inference.export import export_onnx

        self.cfg = model.cfg
        path = _cache_file(cache_dir, "onnx", f"mfvan-{model_digest(model)}.onnx")
        if not path.exists():
            export_onnx(model.eval(), path.with_suffix(".tmp.onnx")).rename(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.name = f"onnxruntime ({self.session.get_providers()[0]})"

    def __call__(self, onset: np.ndarray, apex: np.ndarray, flow=None) -> np.ndarray:
        feed = {k: v.numpy() for k, v in prepare_inputs(self.cfg, onset, apex, flow).items()}
        return _softmax(self.session.run(["logits"], feed)[0])


class AotiBackend:
    """An AOTInductor package (`mfvan export --format aoti`, `mfvan.deploy.inference.export.
    export_aoti`): TorchInductor's kernels compiled ahead of time into a shared library,
    with the weights, loaded by `torch._inductor.aoti_load_package` and called without
    the model's Python code (what TensorRT would give, verifiable where TensorRT cannot be
    installed). `package`: a `.pt2` to load; without one, the model is compiled for
    `device` once and cached, keyed by the model's hash, the device kind and the torch
    version (`~/.cache/mfvan/aoti` unless `cache_dir` says). Batches up to
    AOTI_MAX_BATCH run at once; larger ones in parts."""

    name = "aoti"

    def __init__(
        self,
        model,
        device: str = "cpu",
        package: Path | None = None,
        cache_dir: Path | None = None,
    ):
        try:
            from torch._inductor import aoti_load_package
        except ImportError as e:
            raise BackendUnavailable(f"this torch has no AOTInductor packages ({e})") from None
        cuda = str(device).startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device is visible to PyTorch")
        from mfvan.deploy.inference.export import export_aoti

        self.cfg = model.cfg
        self.device = device
        if package is None:
            kind = "cuda" if cuda else "cpu"
            key = f"{model_digest(model)}-{kind}-torch{torch.__version__.replace('+', '_')}"
            package = _cache_file(cache_dir, "aoti", f"mfvan-{key}.pt2")
            if not package.exists():
                log.info(
                    "aoti: compiling the model for %s ahead of time (a minute or more, once)", kind
                )
                tmp = package.with_suffix(".tmp.pt2")
                export_aoti(model, tmp, device=device)
                tmp.rename(package)
        elif not Path(package).is_file():
            raise BackendUnavailable(f"no AOTInductor package at {package}")
        self.package = Path(package)
        self.runner = aoti_load_package(str(package))
        self.name = f"aoti ({device})"

    def __call__(self, onset: np.ndarray, apex: np.ndarray, flow=None) -> np.ndarray:
        from mfvan.deploy.inference.export import AOTI_MAX_BATCH

        out = []
        for i in range(0, len(onset), AOTI_MAX_BATCH):
            part = slice(i, i + AOTI_MAX_BATCH)
            inputs = prepare_inputs(
                self.cfg, onset[part], apex[part], None if flow is None else flow[part]
            )
            with torch.inference_mode():
                logits = self.runner(*(x.to(self.device) for x in inputs.values()))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out)


class TensorRTBackend:
    """MFVAN compiled by torch-tensorrt (dynamo frontend, ahead of time) into TensorRT
    engines for batches from 1 to the last of BATCH_SIZES (optimised for 8), FP16 by
    default. The compiled program is cached on disk (`torch_tensorrt.save`, an
    ExportedProgram), keyed by the model's hash, the GPU, the TensorRT and torch-tensorrt
    versions, the precision and the batch profile; later starts load it in seconds
    instead of building for minutes.

    UNVERIFIED: torch-tensorrt and TensorRT cannot be installed where this was written
    (NVIDIA's package index is out of reach). Written against torch-tensorrt 2.x's
    documented API (`torch_tensorrt.compile(..., ir="dynamo", arg_inputs=[Input(min_shape,
    opt_shape, max_shape)], enabled_precisions=...)`, `torch_tensorrt.save`,
    `torch.export.load(...).module()`); its tests skip without the library."""

    name = "tensorrt"

    def __init__(self, model, precision: str = "fp16", cache_dir: Path | None = None):
        try:
            import tensorrt
            import torch_tensorrt
        except ImportError as e:
            raise BackendUnavailable(f"torch-tensorrt is not installed ({e})") from None
        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT needs a CUDA device; none is visible")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        cfg = self.cfg = model.cfg
        self.precision = precision
        gpu = torch.cuda.get_device_name().replace(" ", "-")
        key = "-".join(
            [
                model_digest(model),
                gpu,
                f"trt{tensorrt.__version__}",
                f"tt{torch_tensorrt.__version__}",
                precision,
                "x".join(map(str, BATCH_SIZES)),
            ]
        )
        path = _cache_file(cache_dir, "tensorrt", f"mfvan-{key}.ep")
        if path.exists():
            log.info("tensorrt: loading the cached engine %s", path.name)
            self.module = torch.export.load(str(path)).module()
        else:
            log.info(
                "tensorrt: building engines (%s, batch %d-%d); minutes, once",
                precision,
                BATCH_SIZES[0],
                BATCH_SIZES[-1],
            )
            specs = [
                torch_tensorrt.Input(
                    min_shape=(BATCH_SIZES[0], *cfg.input_shape(name)),
                    opt_shape=(BATCH_SIZES[1], *cfg.input_shape(name)),
                    max_shape=(BATCH_SIZES[-1], *cfg.input_shape(name)),
                    dtype=torch.float32,
                )
                for name in cfg.inputs
            ]
            precisions = {torch.float16, torch.float32} if precision == "fp16" else {torch.float32}
            self.module = torch_tensorrt.compile(
                model.cuda().eval(),
                ir="dynamo",
                arg_inputs=specs,
                enabled_precisions=precisions,
            )
            examples = [
                torch.zeros(BATCH_SIZES[1], *cfg.input_shape(name), device="cuda")
                for name in cfg.inputs
            ]
            tmp = path.with_suffix(".tmp")
            torch_tensorrt.save(self.module, str(tmp), arg_inputs=examples)
            tmp.rename(path)
        self.name = f"tensorrt ({precision}, {torch.cuda.get_device_name()})"

    def __call__(self, onset: np.ndarray, apex: np.ndarray, flow=None) -> np.ndarray:
        out = []
        step = BATCH_SIZES[-1]  # the engines' largest batch
        for i in range(0, len(onset), step):
            part = None if flow is None else flow[i : i + step]
            inputs = prepare_inputs(self.cfg, onset[i : i + step], apex[i : i + step], part)
            with torch.inference_mode():
                logits = self.module(*(x.cuda() for x in inputs.values()))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out)


class TritonBackend:
    """A Triton Inference Server that serves the model (`mfvan export --format triton`
    writes its repository), over HTTP with `tritonclient`. Preprocessing runs here; the
    server runs the network on its GPUs and batches requests from every recognizer
    (dynamic batching). The server's model must take this model's input size: checked
    at start from the server's model config."""

    name = "triton"

    def __init__(self, model, url: str = "127.0.0.1:8000", model_name: str = "mfvan"):
        try:
            import tritonclient.http as http
        except ImportError as e:
            raise BackendUnavailable(f"tritonclient is not installed ({e})") from None
        self.http = http
        self.cfg = model.cfg
        self.model_name = model_name
        self.client = http.InferenceServerClient(url=url.removeprefix("http://"))
        try:
            ready = self.client.is_model_ready(model_name)
        except Exception as e:  # connection refused, DNS, timeouts: tritonclient wraps them
            raise BackendUnavailable(f"no Triton server answers at {url} ({e})") from None
        if not ready:
            raise BackendUnavailable(f"the Triton server at {url} has no ready {model_name!r}")
        config = self.client.get_model_config(model_name)
        served = {i["name"]: [int(d) for d in i["dims"]] for i in config["input"]}
        want = {name: list(model.cfg.input_shape(name)) for name in model.cfg.inputs}
        if served != want:
            raise BackendUnavailable(f"{model_name!r} on {url} takes {served}, this model {want}")
        self.name = f"triton ({url}, {model_name})"

    def __call__(self, onset: np.ndarray, apex: np.ndarray, flow=None) -> np.ndarray:
        inputs = []
        for name, x in prepare_inputs(self.cfg, onset, apex, flow).items():
            tensor = self.http.InferInput(name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x.numpy())
            inputs.append(tensor)
        outputs = [self.http.InferRequestedOutput("logits")]
        result = self.client.infer(self.model_name, inputs, outputs=outputs)
        return _softmax(result.as_numpy("logits"))


class Calibrated:
    """A backend whose probabilities are temperature-scaled (`mfvan.model.calibration`;
    the weights' sidecar holds T, fitted on held-out folds), so an event's confidence is
    as often right as it says. Same name and call as the backend it wraps."""

    def __init__(self, backend: Backend, temperature: float):
        self.backend, self.temperature = backend, temperature
        self.name = backend.name

    def __call__(self, onset: np.ndarray, apex: np.ndarray, flow=None) -> np.ndarray:
        from mfvan.model.calibration import scale

        probs = self.backend(onset, apex, flow)
        return probs if self.temperature == 1.0 else scale(probs, self.temperature)


def load_recognizer(weights, name: str = "onnxruntime", **options) -> tuple[Calibrated, dict]:
    """The live recognizer's classifier for a weights file: its backend `name` (with
    fallbacks, as `load_backend`), calibrated with the sidecar's temperature; and the
    sidecar. Raises `WeightsError` or `BackendUnavailable` with one line."""
    from mfvan.model.weights import load_weights, temperature

    model, meta = load_weights(weights)
    return Calibrated(load_backend(name, model, **options), temperature(meta)), meta


def model_digest(model) -> str:
    """A short hash of the model's config and weights: the export cache's key."""
    h = hashlib.sha256(repr(model.cfg).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    """A backend in the registry: how to build it, and what to try when it cannot run."""

    make: Callable[[object, Options], Backend]
    fallbacks: tuple[str, ...] = ()


REGISTRY: dict[str, Entry] = {
    "torch": Entry(
        lambda m, o: TorchBackend(
            m,
            o.device,
            o.compile,
            precision=o.precision or "fp32",
            cuda_graphs=o.cuda_graphs,
            compile_mode=o.compile_mode,
        ),
        ("onnxruntime",),
    ),
    "onnxruntime": Entry(
        lambda m, o: OnnxRuntimeBackend(m, cache_dir=o.cache_dir, threads=o.threads), ("torch",)
    ),
    "aoti": Entry(
        lambda m, o: AotiBackend(m, o.device, package=o.package, cache_dir=o.cache_dir),
        ("onnxruntime", "torch"),
    ),
    "tensorrt": Entry(
        lambda m, o: TensorRTBackend(m, precision=o.precision or "fp16", cache_dir=o.cache_dir),
        ("onnxruntime", "torch"),
    ),
    "triton": Entry(lambda m, o: TritonBackend(m, url=o.url), ("onnxruntime", "torch")),
}
NAMES = tuple(REGISTRY)
if NAMES != BACKENDS:  # the command line offers `choices.BACKENDS`
    raise ImportError(
        f"mfvan.deploy.inference.choices.BACKENDS {BACKENDS} differs from the registry {NAMES}"
    )


def load_backend(name: str, model, options: Options | None = None, **kwargs) -> Backend:
    """The backend `name` for `model`, built with `options` (or the same as keywords:
    `device=`, `compile=`, ...); when it cannot run here, the next of its fallbacks that
    can, each step logged with its reason, so the operator sees what runs."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose from {NAMES}")
    options = Options(**kwargs) if options is None else options
    reasons = []
    for candidate in (name, *REGISTRY[name].fallbacks):
        try:
            backend = REGISTRY[candidate].make(model, options)
        except (BackendUnavailable, ImportError) as e:
            reasons.append(f"{candidate}: {e}")
            log.warning("backend %s unavailable (%s)", candidate, e)
            continue
        log.info("backend: %s", backend.name)
        return backend
    raise BackendUnavailable("no backend can run here: " + "; ".join(reasons))
