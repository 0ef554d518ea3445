"""Export MFVAN for inference engines (`mfvan export --format ...`):

- `onnx`: for ONNX Runtime (and TensorRT's own ONNX parser). torch.onnx's
  torch.export-based exporter (the default since PyTorch 2.9; it needs onnxscript).
- `torchscript`: `torch.jit.trace`, for LibTorch (C++) and older serving stacks.
- `aoti`: an AOTInductor package (`.pt2`): the network compiled ahead of time by
  TorchInductor into a shared library with its weights, for the CPU or a CUDA device; the
  `aoti` backend loads it (`torch._inductor.aoti_load_package`) and runs it without the
  model's Python code. What this project can verify where TensorRT cannot be installed.
- `tensorrt`: torch-tensorrt engines saved as an ExportedProgram (unverified here).
- `triton`: a Triton Inference Server model repository: `NAME/1/model.onnx`,
  `NAME/config.pbtxt` (ONNX Runtime platform, dynamic batching) and `NAME/labels.txt`.

Every graph takes the model's inputs by name (`MFVANConfig.inputs`): `onset` and `apex`,
(batch, C, S, S) float32, and with the motion input `motion` (batch, 3, S, S), preprocessed
as `mfvan.model.mfvan.prepare_inputs` does, and returns `logits` (batch, num_classes), the
batch axis dynamic.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from mfvan.model.mfvan import MFVAN

ONNX_OPSET = 18


def example_inputs(cfg, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Zeros of each input's shape, in `cfg.inputs` order (what exporters trace with)."""
    return tuple(torch.zeros(batch, *cfg.input_shape(name)) for name in cfg.inputs)


def export_onnx(model: MFVAN, path: Path, batch: int = 2) -> Path:
    """Write `model` as ONNX to `path` with a dynamic batch axis; returns `path`."""
    cfg = model.cfg
    model = model.eval()
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." and the like
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            program = torch.onnx.export(
                model,
                example_inputs(cfg, batch),
                input_names=list(cfg.inputs),
                output_names=["logits"],
                dynamic_shapes={name: {0: batch_dim} for name in cfg.inputs},
                opset_version=ONNX_OPSET,
                dynamo=True,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    program.save(str(path))
    return path


def onnx_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session for an exported model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


AOTI_MAX_BATCH = 256  # the largest batch an AOTInductor package takes


def export_aoti(model: MFVAN, path: Path, device: str = "cpu", batch: int = 2) -> Path:
    """`model` compiled ahead of time by AOTInductor for `device` ("cpu", "cuda") into a
    package at `path` (`.pt2`), its batch axis dynamic from 1 to AOTI_MAX_BATCH; returns
    the path. Compiling takes a C++ compiler and a minute or more; loading takes a second."""
    from torch._inductor import aoti_compile_and_package

    cfg = model.cfg
    model = model.eval().to(device)
    batch_dim = torch.export.Dim("batch", min=1, max=AOTI_MAX_BATCH)
    examples = tuple(x.to(device) for x in example_inputs(cfg, batch))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(
            model, examples, dynamic_shapes={name: {0: batch_dim} for name in cfg.inputs}
        )
        out = aoti_compile_and_package(program, package_path=str(path))
    return Path(out)


def export_torchscript(model: MFVAN, path: Path, batch: int = 2) -> Path:
    """`model` traced with TorchScript (the batch axis stays free: the network has no
    shape-dependent Python control flow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(model.eval(), example_inputs(model.cfg, batch))
    traced.save(str(path))
    return path


def export_tensorrt(model: MFVAN, path: Path, precision: str = "fp16") -> Path:
    """torch-tensorrt engines for batches 1-32 (unverified: see `TensorRTBackend`)."""
    import shutil
    import tempfile

    from mfvan.deploy.inference.backends import TensorRTBackend

    with tempfile.TemporaryDirectory() as cache:
        TensorRTBackend(model, precision=precision, cache_dir=Path(cache))
        (built,) = Path(cache).glob("*.ep")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(built, path)
    return path


TRITON_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [
{inputs}
]
output [
  {{ name: "logits" data_type: TYPE_FP32 dims: [ {classes} ] label_filename: "labels.txt" }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {delay_us}
}}
instance_group [ {{ count: 1 kind: {kind} }} ]
"""


@dataclass(frozen=True)
class TritonServing:
    """How Triton serves the model: under `name`; requests from every recognizer batched
    by the server up to `max_batch`, waiting at most `delay_us` for the `preferred` sizes;
    on `kind` instances (KIND_GPU, or KIND_CPU for a server without GPUs)."""

    name: str = "mfvan"
    max_batch: int = 32
    preferred: tuple[int, ...] = (8, 32)
    delay_us: int = 1000
    kind: str = "KIND_GPU"


def export_triton(
    model: MFVAN, folder: Path, classes: list[str], serving: TritonServing = TritonServing()
) -> Path:
    """A Triton model repository at `folder` serving `model` as `serving` says; returns
    the model's folder."""
    name, max_batch, preferred = serving.name, serving.max_batch, serving.preferred
    delay_us, kind = serving.delay_us, serving.kind
    if len(classes) != model.cfg.num_classes:
        raise ValueError(f"{len(classes)} class names for {model.cfg.num_classes} classes")
    cfg = model.cfg
    root = Path(folder) / name
    export_onnx(model, root / "1" / "model.onnx")
    (root / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    (root / "config.pbtxt").write_text(
        TRITON_CONFIG.format(
            name=name,
            max_batch=max_batch,
            inputs=",\n".join(
                f'  {{ name: "{name}" data_type: TYPE_FP32 dims: [ '
                f"{', '.join(str(d) for d in cfg.input_shape(name))} ] }}"
                for name in cfg.inputs
            ),
            classes=cfg.num_classes,
            preferred=", ".join(str(b) for b in preferred),
            delay_us=delay_us,
            kind=kind,
        )
    )
    return root
