"""`mfvan bench`: measure speed, side by side with a reference (the benchmarks live in
`mfvan.deploy.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "measure speed, side by side with a reference"


def add(p: argparse.ArgumentParser) -> None:
    what = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    _add_model(what)
    _add_flow(what)
    _add_spotter(what)
    _add_backends(what)
    _add_pipeline(what)
    _add_web(what)
    _add_detectors(what)


def _add_detectors(what) -> None:
    detectors = what.add_parser(
        "detectors",
        help="face detectors with landmarks (OpenCV's Haar cascades, dlib's HOG and 68-point "
        "predictor) on SynthME scene frames: recall by face size, eye error, ms per frame",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    detectors.add_argument("--per-size", type=int, default=8, help="frames per face size")


def _add_model(what) -> None:
    model = what.add_parser(
        "model",
        help="MFVAN's parameters, FLOPs and latency: eager torch and ONNX Runtime side by side",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model.add_argument(
        "--config",
        choices=("tiny", "demo", "motion", "paper"),
        default="motion",
        help="network config (motion: the one that ships)",
    )
    model.add_argument(
        "--models",
        nargs="+",
        choices=("mfvan", "region-motion", "off-apexnet"),
        default=["mfvan"],
        help="networks timed in the same loop; each after the first is also given as a "
        "ratio of the first's cost",
    )
    model.add_argument("--runs", type=int, default=200, help="timed runs per engine and batch")
    model.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")


def _add_flow(what) -> None:
    flow = what.add_parser(
        "flow",
        help="dense flow: EPE against SynthME's exact flow and time per pair, ours beside "
        "OpenCV's DIS (medium) and Farneback",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    flow.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="crop sizes")
    flow.add_argument("--pairs", type=int, default=32, help="onset/apex pairs per size")
    flow.add_argument(
        "--sets",
        nargs="+",
        default=["SynthME", "photo", "photo H.264 CRF 23"],
        help="SynthME (parametric faces), photo (photographic identities), "
        "'photo H.264 CRF 23' (the same through a camera's codec)",
    )
    flow.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: the batched GPU flow for K streams at once (--streams), side by side with "
        "the CPU kernel on one core, instead of the accuracy comparison",
    )
    flow.add_argument(
        "--streams", type=int, nargs="+", default=[1, 16, 64, 256], help="cuda: batch sizes K"
    )
    flow.add_argument("--runs", type=int, default=20, help="cuda: timed batches per K")
    flow.add_argument("--crop", type=int, default=128, help="cuda: the crops' side, px")


def _add_spotter(what) -> None:
    spotter = what.add_parser(
        "spotter",
        help="the spotter's frames per second on one core (flow included), with our flow and "
        "with OpenCV's in its place, and the latency from apex to emitted interval",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    spotter.add_argument("--fps", type=float, default=200.0, help="the stream's frame rate")
    spotter.add_argument("--seconds", type=float, default=10.0, help="stream length")
    spotter.add_argument("--size", type=int, default=128, help="crop size")
    spotter.add_argument(
        "--faces",
        action="store_true",
        help="instead: what a second face costs (the whole push, on a two-face scene at "
        "--fps, against its first face alone and the one-face tracker)",
    )


def _add_backends(what) -> None:
    backends = what.add_parser(
        "backends",
        help="every backend that runs here, as the recognizer calls it, at batch 1/8/32: "
        "per-pair p50/p99 and pairs/s, against eager torch",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    backends.add_argument(
        "--config",
        choices=("tiny", "demo", "motion", "paper"),
        default="motion",
        help="network config (motion: the one that ships)",
    )
    backends.add_argument("--runs", type=int, default=100, help="timed runs per backend, batch")
    backends.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    backends.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda: eager FP32 (the reference), FP16/BF16, CUDA graphs, "
        "torch.compile max-autotune, the AOTInductor package",
    )
    backends.add_argument(
        "--rows", metavar="REGEX", default=".", help="only the rows whose name matches"
    )


def _add_pipeline(what) -> None:
    from mfvan.deploy.runtime.stage import positive

    pipeline = what.add_parser(
        "pipeline",
        help="transport (640x480 frames, mfvan's protocol beside bare pyzmq, ipc and tcp) and "
        "end-to-end latency and CPU of `mfvan run` on H.264 cameras over RTSP at 200 fps, "
        "adding streams until one fails",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pipeline.add_argument(
        "--max-streams", type=int, default=4, help="most streams to try (0: transport only)"
    )
    pipeline.add_argument("--fps", type=float, default=200.0, help="each camera's frame rate")
    pipeline.add_argument("--warmup", type=float, default=10.0, help="seconds before timing")
    pipeline.add_argument("--window", type=float, default=30.0, help="seconds measured")
    pipeline.add_argument("--frames", type=int, default=2000, help="transport frames per round")
    pipeline.add_argument(
        "--rounds", type=int, default=15, help="transport rounds per way (0: no transport)"
    )
    pipeline.add_argument("--backend", default="onnxruntime", help="the recognizer's backend")
    pipeline.add_argument(
        "--source",
        choices=("rtsp", "file", "synth"),
        default="rtsp",
        help="the cameras: H.264 over RTSP (GStreamer's server), the same H.264 files played "
        "at their rate, or synth:// (rendered in ingest)",
    )
    pipeline.add_argument(
        "--streams",
        type=int,
        nargs="+",
        metavar="N",
        help="the stream counts to run, in order, until one is not kept up with (default: 1 to "
        "--max-streams)",
    )
    pipeline.add_argument(
        "--streams-per-spot",
        type=positive(int),
        default=1,
        help="streams one spot process serves",
    )
    pipeline.add_argument(
        "--data",
        type=Path,
        default=Path("runs/bench/cameras"),
        help="where the cameras' H.264 files are made (once)",
    )
    pipeline.add_argument("--plot", type=Path, help="also write PNG plots into this folder")


def _add_web(what) -> None:
    from mfvan.deploy.runtime.stage import positive

    web = what.add_parser(
        "web",
        help="the web view with every camera previewed for minutes: its memory over time, and "
        "the spot stages' CPU per frame unwatched and watched",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    web.add_argument("--cameras", type=positive(int), default=3, help="synthetic cameras")
    web.add_argument("--minutes", type=positive(float), default=10.0, help="how long watched")
    web.add_argument("--fps", type=positive(float), default=30.0, help="each camera's rate")
    web.add_argument("--sample-s", type=positive(float), default=30.0, help="sample period")
    web.add_argument("--baseline-s", type=positive(float), default=60.0, help="unwatched first")
    web.add_argument("--port", type=int, default=8329, help="the view's port")
    web.add_argument("--metrics-base-port", type=int, default=9201, help="the run's ports")


def run(args: argparse.Namespace) -> int:
    if args.target == "model":
        from mfvan.deploy.bench import model

        report = model.format_model_report(
            model.bench_model(
                args.config, batches=args.batches, runs=args.runs, models=tuple(args.models)
            )
        )
    elif args.target == "flow" and args.device == "cuda":
        from mfvan.deploy.bench import flow

        report = flow.format_flow_batch_report(
            flow.bench_flow_batch(tuple(args.streams), args.crop, args.runs)
        )
    elif args.target == "flow":
        from mfvan.deploy.bench import flow

        report = flow.format_flow_report(
            flow.bench_flow(tuple(args.sizes), args.pairs, sets=tuple(args.sets))
        )
    elif args.target == "backends":
        from mfvan.deploy.bench import backends

        report = backends.format_backends_report(
            backends.bench_backends(
                args.config, tuple(args.batches), args.runs, device=args.device, rows=args.rows
            )
        )
    elif args.target == "spotter":
        from mfvan.deploy.bench import spotter

        if args.faces:
            report = spotter.format_faces_report(spotter.bench_faces(args.fps, args.seconds))
        else:
            report = spotter.format_spotter_report(
                spotter.bench_spotter(args.fps, args.seconds, args.size)
            )
    elif args.target == "detectors":
        from mfvan.deploy.bench import detectors

        report = detectors.format_detectors_report(detectors.bench_detectors(args.per_size))
    elif args.target == "web":
        from mfvan.deploy.bench import web

        report = web.format_web_report(
            web.bench_web(
                args.cameras,
                args.minutes,
                args.fps,
                args.sample_s,
                args.baseline_s,
                args.port,
                args.metrics_base_port,
            )
        )
    else:
        from mfvan.deploy.bench import pipeline

        result = pipeline.bench_pipeline(
            pipeline.PipelineRun(
                args.max_streams,
                args.fps,
                args.warmup,
                args.window,
                args.frames,
                args.rounds,
                args.backend,
                source=args.source,
                counts=args.streams,
                streams_per_spot=args.streams_per_spot,
                data=args.data,
            )
        )
        report = pipeline.format_pipeline_report(result)
        if args.plot:
            plots = pipeline.plot_pipeline(result, args.plot)
            report += "\nplots: " + ", ".join(str(p) for p in plots)
    print(report)
    return 0
