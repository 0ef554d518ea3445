"""`mfvan recognize`: the recognizer stage. Pulls (onset, apex) pairs from spot stages,
classifies them in batches with an inference backend, publishes events (PUB)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mfvan.deploy.runtime import stage

HELP = "stage: classify pairs in batches, publish events"


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The recognizer's own flags: `mfvan run` offers them too and forwards them as given
    (`mfvan.deploy.runtime.supervisor.forwarded`)."""
    from mfvan.deploy.inference.choices import BACKENDS as NAMES
    from mfvan.deploy.inference.choices import PRECISIONS

    p.add_argument("--backend", choices=NAMES, default="onnxruntime", help="inference backend")
    p.add_argument(
        "--weights",
        type=Path,
        help="weights (default: the shipped recognizer, region-motion with its veto; "
        "the MFVAN ones are deploy/weights/mfvan-demo-synthme.safetensors)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="compute precision (fp16, bf16: CUDA only; default: fp16 for tensorrt, fp32 for "
        "the others)",
    )
    p.add_argument("--compile", action="store_true", help="torch: wrap in torch.compile")
    p.add_argument(
        "--cuda-graphs", action="store_true", help="torch on CUDA: CUDA graphs per batch size"
    )
    p.add_argument("--url", default="127.0.0.1:8000", help="triton: the server's HTTP address")
    p.add_argument(
        "--package",
        type=Path,
        help="aoti: a package from `mfvan export --format aoti` (default: compiled for the "
        "weights and device once, and cached)",
    )
    p.add_argument(
        "--max-batch", type=stage.positive(int), default=8, help="most pairs per inference"
    )
    p.add_argument(
        "--max-wait-ms",
        type=stage.not_negative(float),
        default=0.0,
        help="how long a partial batch waits for more pairs (0: run what is queued now)",
    )
    p.add_argument("--with-crops", action="store_true", help="events carry the pair's pixels")
    p.add_argument(
        "--min-confidence",
        type=stage.fraction,
        default=0.0,
        help="publish only events whose class probability (calibrated) is at least this, "
        "0-1; the others are counted in mfvan_events_unsure_total (default: 0, all)",
    )
    p.add_argument(
        "--publish-vetoed",
        action="store_true",
        help="with weights that have a 'none' class (the veto: not a micro-expression), "
        "publish the spots it refuses too, labelled 'none' (default: refused, counted in "
        "mfvan_spots_vetoed_total)",
    )


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="inputs", action="append", required=True, help="pairs endpoint")
    p.add_argument("--out", required=True, help="endpoint to bind (PUB) for events")
    add_model_options(p)
    p.add_argument("--metrics-port", type=stage.port, default=stage.DEFAULT_PORTS["recognize"])
    stage.add_stream_limits(p, most=1024, idle_s=3600.0, what="pairs")
    stage.add_security(p)
    stage.add_logging(p)


def run(args: argparse.Namespace) -> int:
    from mfvan.deploy.inference.backends import BackendUnavailable
    from mfvan.deploy.shipped import SHIPPED_WEIGHTS
    from mfvan.stream.recognizer import RecognizeConfig, run_recognize

    stage.setup_logging("recognize", "-", args.log_format)
    stage.check_endpoints(args, args.out, *args.inputs)  # keys too, before loading a backend
    stop = stage.stop_on_signals()
    weights = args.weights or SHIPPED_WEIGHTS
    try:  # refused weights (WeightsError is a ValueError) or no backend: one line each
        classifier, meta = stage.load_classifier(
            args,
            device=args.device,
            compile=args.compile,
            precision=args.precision,
            cuda_graphs=args.cuda_graphs,
            url=args.url,
            package=args.package,
        )
    except (BackendUnavailable, ValueError) as e:
        print(f"mfvan recognize: {e}", file=sys.stderr)
        return 2
    m = stage.metrics("recognize", args.metrics_port)  # served once ready: `run` waits for it
    version = meta["version"]
    m.set_model(version)
    if "synthme" in str(meta.get("training_data", "")).lower():
        stage.log.warning(
            "recognize: %s is trained on SynthME (synthetic faces), not for real faces",
            Path(weights).name,
        )
    stage.log.info(
        "recognize: %s -> %s with %s, model %s",
        ", ".join(args.inputs),
        args.out,
        classifier.backend.name,
        version,
    )
    config = RecognizeConfig(
        args.inputs,
        args.out,
        max_batch=args.max_batch,
        max_wait_s=args.max_wait_ms / 1000,
        with_crops=args.with_crops,
        keys=args.keys,
        max_streams=args.max_streams,
        idle_s=args.idle_s,
    )
    return stage.run_stage("recognize", run_recognize, config, classifier, m, stop)
