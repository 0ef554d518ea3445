"""`mfvan spot`: the spot stage. Pulls frames from ingest stages, tracks each stream's
face, spots micro-expressions and pushes each (onset, apex) pair to the recognizer."""

from __future__ import annotations

import argparse

from mfvan.deploy.runtime import stage

HELP = "stage: track faces, spot micro-expressions, publish pairs"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="inputs", action="append", required=True, help="frames endpoint")
    p.add_argument("--out", required=True, help="endpoint to bind for (onset, apex) pairs")
    stage.add_security(p)
    stage.add_logging(p)
    p.add_argument("--metrics-port", type=stage.port, default=stage.DEFAULT_PORTS["spot"])
    stage.add_stream_limits(p, most=64, idle_s=60.0, what="frames")
    stage.add_measure_hz(p)
    stage.add_max_faces(p)
    stage.add_flow_device(p)
    p.add_argument(
        "--clips",
        action="store_true",
        help="each pair carries the face crops from 0.5 s before its onset to the frame that "
        "confirmed it (for the event store's clips; a few MB a pair at 200 fps)",
    )
    p.add_argument(
        "--watch",
        metavar="ENDPOINT",
        help="bind this endpoint (XPUB) for the web view: each stream's status a few times a "
        "second, and previews of the streams someone watches (default: none)",
    )


def run(args: argparse.Namespace) -> int:
    from mfvan.kernels.spotter import warm_up
    from mfvan.stream import stages

    stage.setup_logging("spot", "-", args.log_format)
    stage.check_endpoints(args, args.out, *args.inputs, *([args.watch] if args.watch else []))
    stage.one_thread()
    stop = stage.stop_on_signals()
    m = stage.metrics("spot", args.metrics_port)
    warm_up()
    stage.log.info("spot: %s -> %s", ", ".join(args.inputs), args.out)
    config = stages.SpotConfig(
        args.inputs,
        args.out,
        keys=args.keys,
        max_streams=args.max_streams,
        idle_s=args.idle_s,
        params=stage.spotter_params(args),
        clips=args.clips,
        watch=args.watch,
        flow_device=stage.flow_device(args),
        max_faces=args.max_faces,
    )
    return stage.run_stage("spot", stages.run_spot, config, m, stop)
