"""`mfvan ingest`: the ingest stage. Decodes one source (a camera, an RTSP feed, a file,
`synth://`) and publishes its frames; a camera that fails is reopened, with backoff."""

from __future__ import annotations

import argparse

from mfvan.deploy.runtime import stage

HELP = "stage: decode a source, publish frames"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        required=True,
        metavar="[NAME=]SOURCE",
        help="rtsp://..., a file, /dev/videoN, synth://?, env:VAR; NAME= names the stream",
    )
    p.add_argument("--out", required=True, help="endpoint to bind for frames")
    stage.add_security(p)
    stage.add_logging(p)
    p.add_argument("--stream", help="stream id (default: the source's NAME=, or from its URL)")
    p.add_argument(
        "--fps",
        type=stage.positive(float),
        help="frame rate asked of a /dev/video camera, and the rate assumed for a source "
        "that declares none (default: the source's own)",
    )
    p.add_argument("--metrics-port", type=stage.port, default=stage.DEFAULT_PORTS["ingest"])
    p.add_argument(
        "--realtime",
        action="store_true",
        help="play a file at its native rate (default: as fast as the spotter takes it)",
    )


def run(args: argparse.Namespace) -> int:
    from mfvan.deploy.runtime import synth_source
    from mfvan.stream import ingest, stages

    synth_source.register()
    url = stage.source_url(args.source)  # `env:NAME`: the URL, credentials and all, from there
    shown = ingest.redact(url)
    stream_id = args.stream or stage.cameras([args.source])[0][0]
    stage.setup_logging("ingest", stream_id, args.log_format)
    stage.check_endpoints(args, args.out)
    stage.one_thread()
    stop = stage.stop_on_signals()
    m = stage.metrics("ingest", args.metrics_port)
    kind = ingest.kind_of(url)

    def retry(error):
        m.reconnect_attempts.labels(stream_id).inc()
        n = source.attempts  # logged at attempts 1, 2, 4, 8, ... and then every 64th
        if n & (n - 1) == 0 or n % 64 == 0:
            stage.log.warning("ingest %s: %s; trying again (attempt %d)", stream_id, error, n)

    def back(attempts):
        m.reconnects.labels(stream_id).inc()
        stage.log.info("ingest %s: frames again after %d attempt(s)", stream_id, attempts)

    source = ingest.Reconnecting(
        lambda: ingest.open_source(
            url,
            realtime=args.realtime,
            fps=args.fps,
            on_decode_error=lambda e: m.decode_errors.labels(stream_id).inc(),
        ),
        live=kind.reopen_at_end,
        on_reconnect=retry,
        on_back=back,
        max_attempts=None if kind.live else 0,  # a camera is retried; a missing file is an error
        stop=stop,
    )
    stage.log.info("ingest %s: %s -> %s", stream_id, shown, args.out)
    return stage.run_stage(
        "ingest",
        stages.run_ingest,
        source,
        stages.IngestConfig(stream_id, args.out, block=not kind.live, keys=args.keys),
        m,
        stop,
        errors=(ingest.SourceError, ValueError),
    )
