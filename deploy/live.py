"""The live pipeline's commands: `mfvan ingest | spot | recognize | subscribe | run`.

Each stage is one process: it serves its Prometheus `/metrics` (loopback by default),
stops cleanly on SIGINT / SIGTERM (sends what it holds, closes its sockets), and logs one
line saying what it runs. `mfvan run` starts one ingest and one spot process per
`--source`, and one recognizer for all of them, as child processes; it restarts a child
that dies (exponential backoff, counted in `mfvan_restarts_total`) and, on SIGINT /
SIGTERM, stops them all.

Default endpoints are `ipc://` files under a runtime folder and metrics bind 127.0.0.1:
faces are biometric data, and nothing leaves the machine unless the operator says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("mfvan.run")

DEFAULT_PORTS = {"ingest": 9101, "spot": 9102, "recognize": 9103, "run": 9100}


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("MFVAN_LOG", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _one_thread() -> None:
    """A stage process computes on one thread (parallelism comes from processes, one per
    stage and stream): OpenCV's and BLAS's thread pools spin between the small calls of a
    frame-by-frame loop, and took a second core for nothing (measured: 0.9 cores for
    `synth://` at 200 fps instead of 0.6)."""
    import cv2

    cv2.setNumThreads(1)


def _metrics(stage: str, port: int):
    from mfvan.stream.metrics import Metrics

    m = Metrics(stage)
    if port >= 0:
        _, bound = m.serve(port, os.environ.get("MFVAN_METRICS_HOST", "127.0.0.1"))
        log.info("%s: metrics on http://127.0.0.1:%d/metrics", stage, bound)
    return m


# ----------------------------------------------------------------------------- stages


def add_ingest(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="rtsp://..., a file, /dev/videoN, synth://?")
    p.add_argument("--out", required=True, help="endpoint to bind for frames")
    _add_security(p)
    p.add_argument("--stream", help="stream id (default: from the source)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_PORTS["ingest"])
    p.add_argument(
        "--realtime",
        action="store_true",
        help="play a file at its native rate (default: as fast as the spotter takes it)",
    )


def run_ingest(args: argparse.Namespace) -> int:
    from mfvan.deploy import synth_source
    from mfvan.stream import ingest, stages

    _setup_logging()
    if _refused("ingest", args, args.out):
        return 2
    _one_thread()
    synth_source.register()
    stop = _stop_on_signals()
    try:
        stream_id = args.stream or stream_name(args.source)
    except ValueError as e:
        print(f"mfvan ingest: {e}", file=sys.stderr)
        return 2
    m = _metrics("ingest", args.metrics_port)
    live = args.source.startswith(("rtsp://", "rtsps://", "/dev/video", "synth://"))

    def reconnect(error):
        m.reconnects.labels(stream_id).inc()
        log.warning("ingest %s: %s; reconnecting", stream_id, error)

    source = ingest.Reconnecting(
        lambda: ingest.open_source(
            args.source,
            realtime=args.realtime,
            on_decode_error=lambda e: m.decode_errors.labels(stream_id).inc(),
        ),
        live=live and not args.source.startswith("synth://"),
        on_reconnect=reconnect,
        max_attempts=None if live else 0,  # a camera is retried; a missing file is an error
    )
    log.info("ingest %s: %s -> %s", stream_id, args.source, args.out)
    return _run_stage(
        "ingest", stages.run_ingest, source, stream_id, args.out, m, stop, block=not live,
        keys=args.keys, errors=(ingest.SourceError, ValueError),
    )  # fmt: skip


def _run_stage(command: str, loop, *args, errors=(), **kwargs) -> int:
    """Run a stage's loop until it ends; a refused endpoint (or one of `errors`) is one
    line on stderr and exit status 2. ZeroMQ is flushed and ended either way."""
    from mfvan.stream.security import InsecureEndpoint

    try:
        loop(*args, **kwargs)
    except (InsecureEndpoint, *errors) as e:
        print(f"mfvan {command}: {e}", file=sys.stderr)
        return 2
    finally:
        _close_context()
    return 0


def _close_context() -> None:
    """Flush and end ZeroMQ before exit (sends in flight hold references to arrays)."""
    import zmq

    zmq.Context.instance().term()


def add_spot(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="inputs", action="append", required=True, help="frames endpoint")
    p.add_argument("--out", required=True, help="endpoint to bind for (onset, apex) pairs")
    _add_security(p)
    p.add_argument("--metrics-port", type=int, default=DEFAULT_PORTS["spot"])


def run_spot(args: argparse.Namespace) -> int:
    from mfvan.kernels.spotter import warm_up
    from mfvan.stream import stages

    _setup_logging()
    if _refused("spot", args, args.out, *args.inputs):
        return 2
    _one_thread()
    stop = _stop_on_signals()
    m = _metrics("spot", args.metrics_port)
    warm_up()
    log.info("spot: %s -> %s", ", ".join(args.inputs), args.out)
    return _run_stage("spot", stages.run_spot, args.inputs, args.out, m, stop, keys=args.keys)


def add_recognize(p: argparse.ArgumentParser) -> None:
    from mfvan.deploy.backends import NAMES

    p.add_argument("--in", dest="inputs", action="append", required=True, help="pairs endpoint")
    p.add_argument("--out", required=True, help="endpoint to bind (PUB) for events")
    p.add_argument("--backend", choices=NAMES, default="onnxruntime")
    p.add_argument("--weights", type=Path, help="MFVAN weights (default: the shipped demo ones)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    _add_backend_options(p)
    p.add_argument("--max-batch", type=int, default=8, help="most pairs per inference")
    p.add_argument(
        "--max-wait-ms", type=float, default=0.0,
        help="how long a partial batch waits for more pairs (0: run what is queued now)",
    )  # fmt: skip
    p.add_argument("--with-crops", action="store_true", help="events carry the pair's pixels")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_PORTS["recognize"])
    _add_security(p)


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    from mfvan.deploy.backends import PRECISIONS

    p.add_argument(
        "--precision", choices=PRECISIONS,
        help="compute precision (default: fp16 for tensorrt, fp32 for the others)",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch: wrap in torch.compile")
    p.add_argument(
        "--cuda-graphs", action="store_true", help="torch on CUDA: CUDA graphs per batch size"
    )
    p.add_argument("--url", default="127.0.0.1:8000", help="triton: the server's HTTP address")


def _add_security(p: argparse.ArgumentParser) -> None:
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


def _refused(command: str, args: argparse.Namespace, *endpoints: str) -> bool:
    """True (after one line on stderr) when an endpoint would expose faces unprotected."""
    from mfvan.stream.security import InsecureEndpoint, check

    try:
        for endpoint in endpoints:
            check(endpoint, getattr(args, "keys", None), getattr(args, "insecure", False))
    except InsecureEndpoint as e:
        print(f"mfvan {command}: {e}", file=sys.stderr)
        return True
    return False


def run_recognize(args: argparse.Namespace) -> int:
    from mfvan.deploy.backends import BackendUnavailable, load_backend
    from mfvan.deploy.reproduce import DEMO_WEIGHTS
    from mfvan.model.weights import WeightsError, load_weights
    from mfvan.stream import stages

    _setup_logging()
    if _refused("recognize", args, args.out, *args.inputs):
        return 2
    stop = _stop_on_signals()
    weights = args.weights or DEMO_WEIGHTS
    try:
        model, meta = load_weights(weights)
    except WeightsError as e:
        print(f"mfvan recognize: {e}", file=sys.stderr)
        return 2
    try:
        backend = load_backend(
            args.backend, model, device=args.device, compile=args.compile,
            precision=args.precision, cuda_graphs=args.cuda_graphs, url=args.url,
        )  # fmt: skip
    except (BackendUnavailable, ValueError) as e:
        print(f"mfvan recognize: {e}", file=sys.stderr)
        return 2
    m = _metrics("recognize", args.metrics_port)  # served once ready: `run` waits for it
    version = f"{Path(weights).stem}@{meta['sha256'][:12]}"
    if "synthme" in str(meta.get("training_data", "")).lower():
        log.warning("recognize: %s is trained on SynthME (synthetic faces), not for real faces",
                    Path(weights).name)  # fmt: skip
    log.info("recognize: %s -> %s with %s, model %s", ", ".join(args.inputs), args.out,
             backend.name, version)  # fmt: skip
    return _run_stage(
        "recognize", stages.run_recognize, args.inputs, args.out, backend,
        list(meta["classes"]), version, m, stop, max_batch=args.max_batch,
        max_wait_s=args.max_wait_ms / 1000, with_crops=args.with_crops, keys=args.keys,
    )  # fmt: skip


def add_subscribe(p: argparse.ArgumentParser) -> None:
    p.add_argument("endpoint", help="the recognizer's event endpoint")
    p.add_argument("--stream", help="only this stream's events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--timeout", type=float, help="stop after this many seconds without one")
    p.add_argument("--keys", type=Path, help="CURVE keys folder holding client.key_secret")


def run_subscribe(args: argparse.Namespace) -> int:
    import json

    from mfvan.stream import subscribe
    from mfvan.stream.security import client_curve

    n = 0
    curve = client_curve(args.keys) if args.keys else None
    sub = subscribe(args.endpoint, args.stream, args.timeout, curve=curve)
    try:
        for event in sub:
            if args.json:
                print(json.dumps(event.as_dict()), flush=True)
            else:
                print(format_event(event), flush=True)
            n += 1
            if args.count and n >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
        if sub.missed or sub.dropped:
            print(
                f"mfvan subscribe: {n} events; {sub.missed} missed (this subscriber was too "
                f"slow), {sub.dropped} malformed messages dropped",
                file=sys.stderr,
            )
    return 0


def format_event(event) -> str:
    probs = " ".join(f"{k} {v:.2f}" for k, v in event.probs.items())
    t = event.times
    latency = (t.get("t_recognize", 0) - t.get("t_apex", 0)) / 1e6
    return (
        f"[{event.stream}] {event.label:<9} apex frame {event.apex} "
        f"(onset {event.onset}, offset {event.offset})  {probs}  "
        f"apex->event {latency:.0f} ms  model {event.model}"
    )


def stream_name(source: str) -> str:
    """A stream id from a source URL: short, and safe as a topic."""
    if source.startswith("synth://"):
        from mfvan.deploy.synth_source import parse

        o = parse(source)
        return f"synth-{o['seed']}-{o['subject']}"
    name = Path(source.split("?")[0].rstrip("/")).name or "stream"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def add_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="where to write the key pairs")


def run_keys(args: argparse.Namespace) -> int:
    from mfvan.stream.security import make_keys

    folder = make_keys(args.folder)
    print(
        f"CURVE keys in {folder}: server.key(_secret) for a stage's bound tcp:// endpoint, "
        "client.key(_secret) for what connects to it (stages and subscribers), authorized/ "
        "for the clients let in; copy the folder to every host and pass --keys"
    )
    return 0


# ----------------------------------------------------------------------------- run


def add_run(p: argparse.ArgumentParser) -> None:
    from mfvan.deploy.backends import NAMES

    p.add_argument("--source", action="append", required=True, help="one per stream")
    p.add_argument("--events", help="event endpoint (default: ipc:// in the runtime folder)")
    p.add_argument("--backend", choices=NAMES, default="onnxruntime")
    p.add_argument("--weights", type=Path)
    p.add_argument("--runtime-dir", type=Path, help="where ipc:// endpoints live")
    p.add_argument("--metrics-base-port", type=int, default=9101, help="ports from here up")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--with-crops", action="store_true")
    p.add_argument("--realtime", action="store_true", help="play files at their native rate")
    p.add_argument("--device", default="cpu", help="the recognizer's device (cpu, cuda)")
    _add_backend_options(p)
    p.add_argument("--max-batch", type=int, default=8, help="most pairs per inference")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="partial batches wait")
    _add_security(p)


class Child:
    def __init__(self, name: str, argv: list[str]):
        self.name, self.argv = name, argv
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0
        self.backoff = 0.5
        self.finished = False

    def start(self) -> None:
        env = dict(os.environ)
        if self.argv[0] in ("ingest", "spot"):  # see _one_thread
            env.setdefault("OPENBLAS_NUM_THREADS", "1")
            env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mfvan.deploy.cli", *self.argv], env=env
        )
        self.started = time.monotonic()


def plan(args: argparse.Namespace, runtime: Path) -> tuple[list[Child], str]:
    """The child processes of `mfvan run` and the event endpoint."""
    port = args.metrics_base_port
    children, pair_endpoints = [], []
    for i, source in enumerate(args.source):
        stream = stream_name(source)
        if sum(stream_name(s) == stream for s in args.source) > 1:
            stream = f"{stream}-{i}"
        frames = f"ipc://{runtime}/frames-{i}.ipc"
        pairs = f"ipc://{runtime}/pairs-{i}.ipc"
        pair_endpoints.append(pairs)
        ingest = ["ingest", "--source", source, "--out", frames, "--stream", stream,
                  "--metrics-port", str(port)]  # fmt: skip
        if args.realtime:
            ingest.append("--realtime")
        children.append(Child(f"ingest-{stream}", ingest))
        children.append(
            Child(f"spot-{stream}", ["spot", "--in", frames, "--out", pairs,
                                     "--metrics-port", str(port + 1)])
        )  # fmt: skip
        port += 2
    events = args.events or f"ipc://{runtime}/events.ipc"
    rec = ["recognize", "--out", events, "--backend", args.backend, "--metrics-port", str(port),
           "--device", args.device, "--max-batch", str(args.max_batch),
           "--max-wait-ms", str(args.max_wait_ms)]  # fmt: skip
    for p in pair_endpoints:
        rec += ["--in", p]
    rec += ["--url", args.url]
    for flag, value in (
        ("--weights", args.weights), ("--keys", args.keys), ("--precision", args.precision)
    ):  # fmt: skip
        if value:
            rec += [flag, str(value)]
    for flag, on in (
        ("--with-crops", args.with_crops), ("--insecure", args.insecure),
        ("--compile", args.compile), ("--cuda-graphs", args.cuda_graphs),
    ):  # fmt: skip
        if on:
            rec.append(flag)
    children.append(Child("recognize", rec))
    return children, events


def run_pipeline(args: argparse.Namespace) -> int:
    _setup_logging()
    stop = _stop_on_signals()
    runtime = args.runtime_dir or Path(tempfile.mkdtemp(prefix="mfvan-"))
    runtime.mkdir(parents=True, exist_ok=True)
    children, events = plan(args, runtime)
    restarts = _metrics("run", args.metrics_base_port - 1).restarts
    for child in children:
        restarts.labels(child.name)  # at zero until one restarts
    recognizer = children[-1]
    recognizer.start()  # first, and waited for: loading a backend can take a while
    if not _wait_ready(recognizer, timeout_s=180):
        log.error("run: the recognizer did not come up; stopping")
        shutdown(children)
        return 1
    for child in children[:-1]:
        child.start()
    log.info("run: %d stage processes; events on %s", len(children), events)
    log.info("run: subscribe with `mfvan subscribe %s`", events)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    drained = None  # when every source has ended: give the rest a moment, then stop
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
            for child in children:
                code = child.proc.poll() if child.proc else None
                if child.proc is not None and code is not None:
                    if code == 0 and child.name.startswith("ingest"):
                        child.finished = True  # a finite source ended: not a crash
                        child.proc = None
                        continue
                    if time.monotonic() - child.started > 30:
                        child.backoff = 0.5  # it had run a while: start the backoff over
                    log.warning("run: %s exited with %s; restarting in %.1f s",
                                child.name, code, child.backoff)  # fmt: skip
                    child.proc = None
                    child.next_start = time.monotonic() + child.backoff
                    child.backoff = min(child.backoff * 2, 30.0)
                    child.restarts += 1
                    restarts.labels(child.name).inc()
                if child.proc is None and not child.finished:
                    if time.monotonic() >= child.next_start:
                        child.start()
            sources = [c for c in children if c.name.startswith("ingest")]
            if all(c.finished for c in sources):
                drained = drained or time.monotonic() + 3.0
                if time.monotonic() >= drained:
                    log.info("run: every source has ended; stopping")
                    break
    finally:
        shutdown(children)
    return 0


def _wait_ready(child: Child, timeout_s: float) -> bool:
    """Until the child's /metrics answers (it serves them once ready), or it dies."""
    import urllib.request

    port = child.argv[child.argv.index("--metrics-port") + 1]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def shutdown(children: list, timeout_s: float = 10.0) -> None:
    """SIGTERM every child (sources first, so the rest can flush), then wait; SIGKILL
    whatever is still running after `timeout_s`."""
    for child in children:
        if child.proc and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("run: %s did not stop; killing it", child.name)
            child.proc.kill()
            child.proc.wait()
