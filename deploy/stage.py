"""What every stage command shares (`mfvan ingest | spot | recognize`, and `mfvan run`'s
supervisor): logging, stopping on signals, one compute thread, its /metrics, the security
flags and their check, and running a stage's loop so that a refused endpoint is one line.

Default endpoints are `ipc://` files under a runtime folder and metrics bind 127.0.0.1:
faces are biometric data, and nothing leaves the machine unless the operator says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("mfvan.run")

DEFAULT_PORTS = {"ingest": 9101, "spot": 9102, "recognize": 9103, "run": 9100}


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("MFVAN_LOG", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM: the stage's loop ends when it is set."""
    stop = threading.Event()

    def handler(signum, frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def one_thread() -> None:
    """A stage process computes on one thread (parallelism comes from processes, one per
    stage and stream): OpenCV's and BLAS's thread pools spin between the small calls of a
    frame-by-frame loop, and took a second core for nothing (measured: 0.9 cores for
    `synth://` at 200 fps instead of 0.6)."""
    import cv2

    cv2.setNumThreads(1)


def metrics(stage: str, port: int):
    """The stage's Prometheus metrics, served on `port` (a negative port: not served)."""
    from mfvan.stream.metrics import Metrics

    m = Metrics(stage)
    if port >= 0:
        _, bound = m.serve(port, os.environ.get("MFVAN_METRICS_HOST", "127.0.0.1"))
        log.info("%s: metrics on http://127.0.0.1:%d/metrics", stage, bound)
    return m


def run_stage(command: str, loop, *args, errors=(), **kwargs) -> int:
    """Run a stage's loop until it ends; a refused endpoint (or one of `errors`) is one
    line on stderr and exit status 2. ZeroMQ is flushed and ended either way."""
    from mfvan.stream.security import InsecureEndpoint

    try:
        loop(*args, **kwargs)
    except (InsecureEndpoint, *errors) as e:
        print(f"mfvan {command}: {e}", file=sys.stderr)
        return 2
    finally:
        close_context()
    return 0


def close_context() -> None:
    """Flush and end ZeroMQ before exit (sends in flight hold references to arrays)."""
    import zmq

    zmq.Context.instance().term()


def add_security(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keys",
        type=Path,
        help="CURVE keys folder (`mfvan keys DIR`): every tcp:// endpoint of this stage is "
        "encrypted and authenticated (bound as the server, connected as a client)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a tcp:// endpoint off loopback without CURVE (faces are biometric data)",
    )


def refused(command: str, args: argparse.Namespace, *endpoints: str) -> bool:
    """True (after one line on stderr) when an endpoint would expose faces unprotected."""
    from mfvan.stream.security import InsecureEndpoint, check

    try:
        for endpoint in endpoints:
            check(endpoint, getattr(args, "keys", None), getattr(args, "insecure", False))
    except InsecureEndpoint as e:
        print(f"mfvan {command}: {e}", file=sys.stderr)
        return True
    return False


def stream_name(source: str) -> str:
    """A stream id from a source URL: short, and safe as a topic."""
    if source.startswith("synth://"):
        from mfvan.deploy.synth_source import parse

        o = parse(source)
        return f"synth-{o['seed']}-{o['subject']}"
    name = Path(source.split("?")[0].rstrip("/")).name or "stream"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
