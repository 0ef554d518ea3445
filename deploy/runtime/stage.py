"""What every stage command shares (`mfvan ingest | spot | recognize`, and `mfvan run`'s
supervisor): logging, stopping on signals, one compute thread, its /metrics, the security
flags and their check, and running a stage's loop so that a refused endpoint is one line.

Start or fail, loudly: any mistake a stage can find before it works (a bad flag, an
endpoint in use or refused, a port taken, missing keys, a source that can never work) is
`Fatal` (or one of the errors `run_stage` is given): one line on stderr, exit status
EXIT_FATAL (2), and `mfvan run` does not restart it. Anything else that ends a stage is a
crash (a traceback, exit 1), which `mfvan run` restarts. Once SIGINT or SIGTERM arrives a
stage has STOP_S to end its loop; past that it exits at once (a source blocked in a
network read must not hold a shutdown).

Default endpoints are `ipc://` files under a runtime folder and metrics bind 127.0.0.1:
faces are biometric data, and nothing leaves the machine unless the operator says so.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("mfvan.run")

DEFAULT_PORTS = {"ingest": 9101, "spot": 9102, "recognize": 9103, "run": 9100, "forward": 9104}
EXIT_FATAL = 2  # a configuration error: not worth restarting
STOP_S = 1.5  # after a stop signal, the most a stage takes to end
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Fatal(Exception):
    """A mistake that restarting cannot mend; its message is the one line the user sees."""


LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(stage)s[%(process)d] %(stream)s %(name)s: %(message)s"


class _Context(logging.Filter):
    """Names the stage and stream on every record: a record's own `stream` (given with
    `extra={"stream": ...}`) wins over the process's."""

    def __init__(self, stage: str, stream: str):
        super().__init__()
        self.stage, self.stream = stage, stream

    def filter(self, record: logging.LogRecord) -> bool:
        record.stage = self.stage
        if not hasattr(record, "stream"):
            record.stream = self.stream
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, stage, stream, pid, logger,
    message (and the traceback, if any), for log shippers (Loki, Elasticsearch)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        from mfvan.stream.client import iso

        out = {
            "time": iso(int(record.created * 1e9)),
            "level": record.levelname,
            "stage": getattr(record, "stage", "-"),
            "stream": getattr(record, "stream", "-"),
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _level(variable: str, default: str) -> str:
    level = os.environ.get(variable, default).upper()
    if level not in LEVELS:
        raise Fatal(f"{variable}={os.environ[variable]!r} is not a log level {LEVELS}")
    return level


def add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text or as one JSON object each (time, level, stage, stream, pid, "
        "logger, message)",
    )


def setup_logging(stage: str, stream: str = "-", fmt: str = "text") -> None:
    """Log lines to stderr naming the stage, the stream (`-`: not one stream's) and the
    pid, as text or JSON (`fmt`). mfvan's own at MFVAN_LOG (default INFO); other
    libraries' at MFVAN_LOG_LIBRARIES (default WARNING: onnxscript alone logged some 200
    INFO lines at every cold start)."""
    level, libraries = _level("MFVAN_LOG", "INFO"), _level("MFVAN_LOG_LIBRARIES", "WARNING")
    handler = logging.StreamHandler()
    handler.addFilter(_Context(stage, stream))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(libraries)
    logging.getLogger("mfvan").setLevel(level)


def stop_on_signals(grace_s: float = STOP_S) -> threading.Event:
    """An event set by SIGINT or SIGTERM: the stage's loop ends when it is set. If the
    process has not ended `grace_s` after the signal, it exits at once with the signal's
    status. The deadline is kept by a thread that learns of the signal from the C level
    (`signal.set_wakeup_fd`), since Python runs a signal handler only once the main thread
    is back in Python: a source blocked opening a dead camera would hold it for seconds."""
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def watch():
        signum = os.read(read, 1)[0]
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()
        time.sleep(grace_s)
        log.warning("did not stop within %.1f s of the signal; exiting now", grace_s)
        logging.shutdown()
        os._exit(128 + signum)

    threading.Thread(target=watch, daemon=True, name="stop-deadline").start()
    return stop


def notify_systemd(state: str) -> None:
    """Tell systemd how the service stands (`READY=1`, `STOPPING=1`) when it runs us as
    `Type=notify`; nothing without $NOTIFY_SOCKET. (The sd_notify protocol: one datagram
    on a unix socket, `@` naming an abstract one.)"""
    import socket

    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        log.warning("could not tell systemd %s: %s", state, e)


def port(text: str) -> int:
    """An argparse type: a TCP port 1-65535, 0 (any free port) or -1 (do not serve)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not -1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n} is not a port (1-65535, 0: any, -1: none)")
    return n


def _number(kind, ok, words: str):
    """An argparse type: a number of `kind` for which `ok(n)` holds ("must be `words`")."""

    def parse(text: str):
        try:
            n = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not ok(n):
            raise argparse.ArgumentTypeError(f"{text} must be {words}")
        return n

    parse.__name__ = f"{kind.__name__} {words}"
    return parse


def positive(kind):
    """An argparse type: a number of `kind` above 0."""
    return _number(kind, lambda n: n > 0, "above 0")


def not_negative(kind):
    """An argparse type: a number of `kind`, 0 or more."""
    return _number(kind, lambda n: n >= 0, "0 or more")


fraction = _number(float, lambda n: 0 <= n <= 1, "from 0 to 1")  # an argparse type


def one_thread() -> None:
    """A stage process computes on one thread (parallelism comes from processes, one per
    stage and stream): OpenCV's and BLAS's thread pools spin between the small calls of a
    frame-by-frame loop, and took a second core for nothing (measured: 0.9 cores for
    `synth://` at 200 fps instead of 0.6)."""
    import cv2

    cv2.setNumThreads(1)


def metrics(stage: str, port: int):
    """The stage's Prometheus metrics, with /live and /ready, served on `port` (a negative
    port: not served); a port taken or a bad MFVAN_METRICS_HOST is `Fatal`."""
    from mfvan.stream.metrics import Metrics

    m = Metrics(stage)
    if port >= 0:
        serve_metrics(m, port)
    return m


def serve_metrics(m, port: int, registry=None) -> None:
    """Serve `m`'s /metrics (or `registry`'s: the run's with its stages'), /live, /ready."""
    host = os.environ.get("MFVAN_METRICS_HOST", "127.0.0.1")
    try:
        _, bound = m.serve(port, host, registry=registry)
    except OSError as e:
        raise Fatal(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
    except OverflowError:
        raise Fatal(f"metrics port {port} is not a port (1-65535)") from None
    log.info("%s: metrics on http://%s:%d/metrics (/ready, /live)", m.stage, host, bound)


def run_stage(command: str, loop, *args, errors=(), **kwargs) -> int:
    """Run a stage's loop until it ends; a refused or unusable endpoint, a ZeroMQ error,
    `Fatal` or one of `errors` is one line on stderr and exit status EXIT_FATAL. ZeroMQ is
    flushed and ended either way: sockets at once (linger 0) after a failure, so that
    ending it cannot hang on a socket that never bound."""
    import zmq

    from mfvan.stream.security import EndpointError

    ok = False
    try:
        loop(*args, **kwargs)
        ok = True
    except (EndpointError, zmq.ZMQError, Fatal, *errors) as e:
        print(f"mfvan {command}: {e}", file=sys.stderr)
        return EXIT_FATAL
    finally:
        close_context(flush=ok)
    return 0


def close_context(flush: bool = True) -> None:
    """End ZeroMQ before exit: flushing what is queued (sends in flight hold references to
    arrays), or with `flush=False` dropping it, every socket closed with linger 0."""
    import zmq

    ctx = zmq.Context.instance()
    if flush:
        ctx.term()
    else:
        ctx.destroy(linger=0)


def add_stream_limits(p: argparse.ArgumentParser, most: int, idle_s: float, what: str) -> None:
    """`--max-streams` and `--idle-s`: how many streams a stage keeps state for, and when
    it forgets a quiet one (`mfvan.stream.sockets.Streams`)."""
    p.add_argument(
        "--max-streams",
        type=positive(int),
        default=most,
        help=f"streams served at once; {what} of one more are dropped and counted",
    )
    p.add_argument(
        "--idle-s",
        type=positive(float),
        default=idle_s,
        help="a stream that sent nothing this long is forgotten (its state, metric series)",
    )


MAX_FACES = 4  # faces tracked per stream by default (`--max-faces`)


def add_max_faces(p: argparse.ArgumentParser) -> None:
    """`--max-faces`: faces tracked and spotted per stream, each with its own id."""
    p.add_argument(
        "--max-faces",
        type=positive(int),
        default=MAX_FACES,
        metavar="N",
        help=f"faces tracked per stream, each with its own id and spotter (default {MAX_FACES}; "
        "1: the largest face only)",
    )


def add_measure_hz(p: argparse.ArgumentParser) -> None:
    """`--measure-hz`: the spotter's signal rate (`SpotterParams.measure_hz`)."""
    p.add_argument(
        "--measure-hz",
        type=not_negative(float),
        help="measure the spotting signal at most this often per second of video (default: "
        "the spotter's, 100: every other frame at 200 fps, every frame at 30 or 60; 0: every "
        "frame, twice the flow at 200 fps)",
    )


def add_flow_device(p: argparse.ArgumentParser) -> None:
    """`--flow-device`: where the spotter's dense flow runs."""
    p.add_argument(
        "--flow-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the spotter's dense flow runs: cuda is the same method as a Numba CUDA "
        "kernel (mfvan.kernels.flow_cuda); without a GPU the CPU kernel runs, said in the log "
        "(default: cpu)",
    )


def flow_device(args: argparse.Namespace) -> str:
    """`--flow-device` as it can run here: cuda only when Numba sees a GPU, else cpu, with a
    log line saying so."""
    wanted = getattr(args, "flow_device", "cpu")
    if wanted != "cuda":
        return "cpu"
    from mfvan.kernels.flow_cuda import available

    if available():
        log.info("spot: the dense flow runs on the GPU (numba.cuda)")
        return "cuda"
    log.warning("spot: --flow-device cuda, but Numba sees no CUDA device: the CPU kernel runs")
    return "cpu"


def spotter_params(args: argparse.Namespace):
    """The spotter's parameters as `--measure-hz` sets them (None: the defaults)."""
    if getattr(args, "measure_hz", None) is None:
        return None
    from mfvan.kernels.spotter import SpotterParams

    return SpotterParams(measure_hz=args.measure_hz)


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


def check_endpoints(args: argparse.Namespace, *endpoints: str) -> None:
    """`security.EndpointError` (one line, exit 2, from the CLI) when an endpoint would
    expose faces unprotected, or --keys is unusable."""
    from mfvan.stream.security import check, check_keys

    for endpoint in endpoints:
        check(endpoint, getattr(args, "keys", None), getattr(args, "insecure", False))
    if getattr(args, "keys", None) is not None:
        check_keys(args.keys)


def source_url(source: str) -> str:
    """The URL a `--source` names (`NAME=` taken off, `env:NAME` resolved), checked for
    what can never work (a missing file, a folder, an RTSP URL without a host, an unset
    variable, a bad `synth://` URL): `Fatal` naming it. `synth://` must be registered
    first."""
    from mfvan.stream import ingest

    try:
        url = ingest.resolve(named(source)[1])
        stream_name(url)
        ingest.check_source(url)
    except (ValueError, ingest.SourceError) as e:
        raise Fatal(str(e)) from None
    return url


# a camera's name, which is its stream id and its events' topic: letters, digits and
# `_.-`, starting with a letter or digit (safe in a topic, a file name, a metric label)
CAMERA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def named(source: str) -> tuple[str | None, str]:
    """(name, source) of `NAME=SOURCE`, as Frigate users name cameras; (None, source)
    when there is no name. Only a valid camera name before the first `=` counts, so a URL
    whose query holds `=` (`rtsp://h/s?channel=1`) is a source, not a name; a file whose
    name starts like `take=2.mp4` is given as `./take=2.mp4`."""
    name, sep, rest = source.partition("=")
    if sep and rest and CAMERA_NAME.fullmatch(name):
        return name, rest
    return None, source


def cameras(sources: list[str]) -> list[tuple[str, str]]:
    """(stream id, source) per `--source`, in order: the name given (`NAME=SOURCE`), or
    else one derived from the URL (`stream_name`), with `-i` (its place) added where two
    would be the same. A name given twice, or not a valid name, is `Fatal`."""
    from mfvan.stream.ingest import resolve

    split = [named(source) for source in sources]
    given = [name for name, _ in split if name is not None]
    twice = sorted({name for name in given if given.count(name) > 1})
    if twice:
        raise Fatal(f"--source: camera name(s) {', '.join(twice)} given more than once")
    derived = []
    for name, source in split:
        if name is None:
            try:
                name = stream_name(resolve(source))
            except ValueError as e:
                raise Fatal(str(e)) from None
        derived.append(name)
    out = []
    for i, (name, (own, source)) in enumerate(zip(derived, split, strict=True)):
        if own is None and (derived.count(name) > 1 or name in given):
            name = f"{name}-{i}"
        out.append((name, source))
    return out


def stream_name(source: str) -> str:
    """A stream id from a source URL: short, and safe as a topic."""
    if source.startswith("synth://"):
        from mfvan.deploy.runtime.synth_source import parse

        o = parse(source)
        return f"synth-{o['seed']}-{o['subject']}"
    return safe_name(Path(source.split("?")[0].rstrip("/")).name) or "stream"


def safe_name(text: str) -> str:
    """`text` with every character but letters, digits and `-_.` made `-`, without a
    leading `-` or `.` (it would read as a flag, or a hidden file), and at most
    `SAFE_NAME_MAX` characters (a longer one keeps its start and a hash of the whole):
    safe as a stream id (of at most 128), a topic, a file name. May be empty."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in text).lstrip("-.")
    if len(name) > SAFE_NAME_MAX:
        digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        name = f"{name[: SAFE_NAME_MAX - 9]}-{digest}"
    return name


SAFE_NAME_MAX = 100  # characters: room for `-i` and a camera name's own within 128


def load_classifier(args: argparse.Namespace, **options):
    """The recognizer's `Classifier` (one for `mfvan recognize`, `analyze` and
    `spot-eval`) from `--weights` (default: the shipped ones), `--backend` with `options`,
    and `--min-confidence` / `--publish-vetoed` where the command has them; and the
    weights' metadata. Raises `BackendUnavailable`, or a ValueError for refused weights."""
    from mfvan.deploy.inference.backends import load_recognizer
    from mfvan.deploy.shipped import SHIPPED_WEIGHTS
    from mfvan.stream.recognizer import Classifier

    backend, meta = load_recognizer(args.weights or SHIPPED_WEIGHTS, args.backend, **options)
    classifier = Classifier(
        backend,
        list(meta["classes"]),
        meta["version"],
        min_confidence=getattr(args, "min_confidence", 0.0),
        publish_vetoed=getattr(args, "publish_vetoed", False),
    )
    return classifier, meta
