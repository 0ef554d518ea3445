"""`mfvan run`: the live pipeline. Starts one ingest process per `--source`, one spot
process per `--streams-per-spot` of them, and one recognizer for all of them; supervises
them (`mfvan.deploy.runtime.supervisor`: a child that dies is restarted with backoff and counted),
and on SIGINT / SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mfvan.deploy.runtime import capacity, stage

HELP = "the live pipeline: ingest, spot and recognize, supervised"


def add(p: argparse.ArgumentParser) -> None:
    from mfvan.deploy.commands.forward import add_output_options
    from mfvan.deploy.commands.recognize import add_model_options
    from mfvan.deploy.commands.record import add_store_options
    from mfvan.deploy.commands.web import add_web_options

    p.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="[NAME=]SOURCE",
        help="one per camera: a URL, a file, /dev/videoN, or env:VAR (the URL in environment "
        "variable VAR, so that a password in it is in no process's command line); NAME= "
        "names the camera (its stream id, e.g. door=rtsp://...; default: from the URL). "
        "In the config file: [cameras.NAME] tables",
    )
    p.add_argument("--events", help="event endpoint (default: ipc:// in the runtime folder)")
    p.add_argument(
        "--runtime-dir",
        type=Path,
        help="where ipc:// endpoints live: made 0700, one run at a time, removed after "
        "(default: a new folder under $TMPDIR)",
    )
    p.add_argument(
        "--metrics-base-port",
        type=stage.port,
        default=9101,
        help="ports from here up (the run's own: one below)",
    )
    p.add_argument(
        "--streams-per-spot",
        type=stage.positive(int),
        default=1,
        metavar="K",
        help="streams one spot process serves, in --source order (default 1): N streams "
        "then need ceil(N / K) spot processes, not N; a killed shared one is restarted and "
        "all its streams resume",
    )
    stage.add_measure_hz(p)  # forwarded to every spot process
    stage.add_max_faces(p)  # and this
    stage.add_flow_device(p)  # and this
    add_store_options(p)  # a recorder child keeps every event (`mfvan record`)
    p.add_argument(
        "--with-clips",
        action="store_true",
        help="events carry a clip of face crops (0.5 s before the onset to the confirming "
        "frame), kept by --db as MP4 beside the snapshots; implies --with-crops",
    )
    add_output_options(p)  # a forward child sends them to MQTT, webhooks (`mfvan forward`)
    # a web child shows the cameras and events (`mfvan web`)
    add_web_options(p, bind_flag="--web", faces_flag="--web-faces", default=None)
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--realtime", action="store_true", help="play files at their native rate")
    p.add_argument(
        "--overcommit",
        action="store_true",
        help="start even when the plan needs more cores, memory or file descriptors than "
        "this machine has (refused otherwise, in one line)",
    )
    add_model_options(p)  # the recognizer's, forwarded to it as given
    stage.add_security(p)
    stage.add_logging(p)


def _check(args: argparse.Namespace) -> None:
    """What can be known wrong before anything starts: `stage.Fatal` naming it."""
    from mfvan.deploy.runtime import synth_source

    synth_source.register()
    base, n = args.metrics_base_port, len(args.source)
    if not 2 <= base <= 65535 - 2 * n - 1:
        raise stage.Fatal(
            f"--metrics-base-port {base}: the run serves on {base - 1} and its stages on "
            f"{base} to {base + 2 * n + 1}, which must all be ports (1-65535)"
        )
    for source in args.source:
        stage.source_url(source)
    stage.cameras(args.source)  # names given twice
    stage.check_endpoints(args, *([args.events] if args.events else []))
    if args.web is not None:  # a view that would serve faces to the network without a token
        from mfvan.deploy.commands.web import check_bind, token

        check_bind(args.web, token(args.token_file))
    if args.db is not None:  # a store that cannot be written is known now, not later
        from mfvan.stream.outputs.store import EventStore, StoreError

        try:
            EventStore(args.db).close()
        except (StoreError, OSError) as e:
            raise stage.Fatal(f"--db {args.db}: {e}") from None


def _rates(args: argparse.Namespace) -> list[float]:
    """Each camera's frame rate as far as it is known before it is opened: its own `fps`
    (a TOML camera's), a `synth://` source's, else `capacity.ASSUMED_FPS`."""
    from mfvan.deploy.runtime import synth_source

    options = getattr(args, "camera_options", None) or {}
    rates = []
    for name, source in stage.cameras(args.source):
        fps = options.get(name, {}).get("fps")
        if fps is None and source.startswith("synth://"):
            fps = synth_source.parse(source)["fps"]
        rates.append(float(fps or capacity.ASSUMED_FPS))
    return rates


def _fits(args: argparse.Namespace, children) -> None:
    """The plan against this machine: `Fatal` in one line when it cannot hold it, unless
    --overcommit (then a warning)."""
    why = capacity.refusal(capacity.needs(children, _rates(args)))
    if why and not args.overcommit:
        raise stage.Fatal(why)
    if why:
        stage.log.warning("run: --overcommit: %s", why)


def _announce(args: argparse.Namespace, processes: int, events: str) -> None:
    """Where to find what the run makes: its events, the store, the web view."""
    stage.log.info("run: %d stage processes; events on %s", processes, events)
    stage.log.info("run: subscribe with `mfvan subscribe %s`", events)
    if args.db is not None:
        db = args.db
        stage.log.info("run: events kept in %s (`mfvan events list --db %s`)", db, db)
    if args.web is not None:
        stage.log.info("run: web view on http://%s/", args.web)


def run(args: argparse.Namespace) -> int:
    from mfvan.deploy.runtime.supervisor import (
        Aggregate,
        Child,
        RuntimeDir,
        Supervisor,
        is_ready,
        plan,
        shutdown,
        wait_ready,
    )

    stage.setup_logging("run", "-", args.log_format)
    os.environ["MFVAN_LOG_FORMAT"] = args.log_format  # its stages log alike
    _check(args)
    stop = stage.stop_on_signals(grace_s=20.0)  # its stages stop first, in order
    started = time.monotonic()
    metrics = stage.metrics("run", -1)  # served below, with its stages' metrics
    with RuntimeDir(args.runtime_dir) as runtime:
        children, events = plan(args, runtime)
        _fits(args, children)
        # one endpoint for the whole run: its own series and every stage's, fetched at
        # each scrape; Prometheus scrapes only this port, however many cameras
        stage.serve_metrics(
            metrics, args.metrics_base_port - 1, Aggregate(metrics.registry, children).registry
        )
        supervisor = Supervisor(children, metrics.restarts)
        recognizer = children[-1]
        # the spot stage's kernels compiled once, beside the recognizer's loading, before
        # any spot process starts (N of them would each compile them); quick when cached
        warm = Child("warm-up", "all", ["warm-up"])
        warm.start()
        recognizer.start()  # first, and waited for: loading a backend can take a while
        try:
            if not wait_ready(recognizer, timeout_s=180, stop=stop):
                code = recognizer.poll()
                if not stop.is_set():
                    print(
                        f"mfvan run: the recognizer did not come up (exit status {code}; "
                        "its message is above); stopping",
                        file=sys.stderr,
                    )
                return stage.EXIT_FATAL if code is not None else 1
            while warm.poll() is None and not stop.wait(0.1):
                pass
            if warm.poll() not in (0, None):
                stage.log.warning("run: mfvan warm-up failed; each spot stage compiles itself")
            for child in children[:-1]:
                child.start()
            _announce(args, len(children), events)
            # until each stage says it is ready (/ready); the recorder has none
            starting = [c for c in children[:-1] if c.stage != "record"]
            deadline = None if args.seconds is None else time.monotonic() + args.seconds
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.2)
                if supervisor.step(time.monotonic()):
                    break
                if starting:
                    starting = [c for c in starting if not c.finished and not is_ready(c)]
                    if not starting:  # the run is ready when every stage is
                        metrics.ready.set()
                        stage.notify_systemd("READY=1")  # systemd's Type=notify waits for it
                        stage.log.info(
                            "run: every stage ready %.1f s after the start",
                            time.monotonic() - started,
                        )
        finally:
            stage.notify_systemd("STOPPING=1")
            warm.stop()
            shutdown(children)
    if supervisor.failed:
        print(f"mfvan run: failed: {', '.join(supervisor.failed)}", file=sys.stderr)
        return stage.EXIT_FATAL
    return 0
