"""`mfvan run`: the live pipeline. Starts one ingest and one spot process per `--source`
and one recognizer for all of them, supervises them (`mfvan.deploy.supervisor`: a child
that dies is restarted with backoff and counted), and on SIGINT / SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mfvan.deploy import stage

HELP = "the live pipeline: ingest, spot and recognize, supervised"


def add(p: argparse.ArgumentParser) -> None:
    from mfvan.deploy.commands.recognize import add_model_options

    p.add_argument("--source", action="append", required=True, help="one per stream")
    p.add_argument("--events", help="event endpoint (default: ipc:// in the runtime folder)")
    p.add_argument("--runtime-dir", type=Path, help="where ipc:// endpoints live")
    p.add_argument("--metrics-base-port", type=int, default=9101, help="ports from here up")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--realtime", action="store_true", help="play files at their native rate")
    add_model_options(p)  # the recognizer's, forwarded to it as given
    stage.add_security(p)


def run(args: argparse.Namespace) -> int:
    from mfvan.deploy.supervisor import Supervisor, plan, shutdown, wait_ready

    stage.setup_logging()
    stop = stage.stop_on_signals()
    runtime = args.runtime_dir or Path(tempfile.mkdtemp(prefix="mfvan-"))
    runtime.mkdir(parents=True, exist_ok=True)
    children, events = plan(args, runtime)
    supervisor = Supervisor(children, stage.metrics("run", args.metrics_base_port - 1).restarts)
    recognizer = children[-1]
    recognizer.start()  # first, and waited for: loading a backend can take a while
    if not wait_ready(recognizer, timeout_s=180):
        stage.log.error("run: the recognizer did not come up; stopping")
        shutdown(children)
        return 1
    for child in children[:-1]:
        child.start()
    stage.log.info("run: %d stage processes; events on %s", len(children), events)
    stage.log.info("run: subscribe with `mfvan subscribe %s`", events)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
            if supervisor.step(time.monotonic()):
                break
    finally:
        shutdown(children)
    return 0
