"""`mfvan export`: MFVAN as ONNX, TorchScript, an AOTInductor package, a TensorRT engine or
a Triton repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "export MFVAN: ONNX, TorchScript, AOTInductor, TensorRT, a Triton repository"
EXPORT_FORMATS = ("onnx", "torchscript", "aoti", "tensorrt", "triton")


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="a file (onnx, torchscript, aoti: .pt2, tensorrt) or a repository folder (triton)",
    )
    p.add_argument("--device", default="cpu", help="aoti: what to compile for (cpu, cuda)")
    p.add_argument("--weights", type=Path, help="MFVAN weights (default: the shipped demo ones)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp16", help="tensorrt")
    p.add_argument("--name", default="mfvan", help="triton: the model's name")
    p.add_argument("--max-batch", type=int, default=32, help="triton: the largest batch")
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=1000,
        help="triton: how long the server waits to fill a batch",
    )
    p.add_argument(
        "--kind",
        choices=("KIND_GPU", "KIND_CPU"),
        default="KIND_GPU",
        help="triton: where the server runs the model",
    )


def run(args: argparse.Namespace) -> int:
    from mfvan.deploy.inference import export
    from mfvan.deploy.inference.backends import BackendUnavailable
    from mfvan.deploy.shipped import DEMO_WEIGHTS
    from mfvan.model.weights import WeightsError, load_weights

    try:
        model, meta = load_weights(args.weights or DEMO_WEIGHTS)
    except WeightsError as e:
        print(f"mfvan export: {e}", file=sys.stderr)
        return 2
    try:
        if args.format == "onnx":
            out = export.export_onnx(model, args.out)
        elif args.format == "torchscript":
            out = export.export_torchscript(model, args.out)
        elif args.format == "aoti":
            import torch

            if args.device.startswith("cuda") and not torch.cuda.is_available():
                raise BackendUnavailable("--device cuda: no CUDA device is visible to PyTorch")
            out = export.export_aoti(model, args.out, device=args.device)
        elif args.format == "tensorrt":
            out = export.export_tensorrt(model, args.out, args.precision)
        else:
            serving = export.TritonServing(
                args.name, args.max_batch, delay_us=args.max_queue_delay_us, kind=args.kind
            )
            out = export.export_triton(model, args.out, list(meta["classes"]), serving)
    except BackendUnavailable as e:
        print(f"mfvan export: {e}", file=sys.stderr)
        return 2
    print(f"{args.format}: {out}")
    return 0
