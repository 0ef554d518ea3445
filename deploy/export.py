"""Export MFVAN for inference engines: ONNX (for ONNX Runtime, and TensorRT's parser).

The graph takes `onset` and `apex`, (batch, C, S, S) float32, preprocessed as
`mfvan.model.mfvan.preprocess` does, and returns `logits` (batch, num_classes). The batch
axis is dynamic. Uses torch.onnx's torch.export-based exporter (the default since
PyTorch 2.9; it needs onnxscript).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from mfvan.model.mfvan import MFVAN

ONNX_OPSET = 18


def export_onnx(model: MFVAN, path: Path, batch: int = 2) -> Path:
    """Write `model` as ONNX to `path` with a dynamic batch axis; returns `path`."""
    cfg = model.cfg
    model = model.eval()
    example = torch.zeros(batch, cfg.in_chans, cfg.image_size, cfg.image_size)
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            model,
            (example, example.clone()),
            input_names=["onset", "apex"],
            output_names=["logits"],
            dynamic_shapes={"onset": {0: batch_dim}, "apex": {0: batch_dim}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
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
