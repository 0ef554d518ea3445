"""`mfvan run`'s supervisor: the stage processes it starts, what it does when one exits,
and how it stops them.

`plan` turns `mfvan run`'s flags into child commands: one ingest process per `--source`,
one spot process per `--streams-per-spot` sources (default 1: one each; K: the streams in
order, K to a process, so N streams need N + ceil(N / K) + 1 processes, not 2N + 1), one
recognizer for all of them, which gets `mfvan run`'s recognizer flags as they were given
(`forwarded`). Each source reaches its ingest through the environment
(`--source env:MFVAN_SOURCE`), never argv, so a password in it is not in `ps`.

`Supervisor.step` is the restart policy, one poll of every child:
- exit 0 of an ingest: its finite source ended, not a crash;
- exit 2 (EXIT_FATAL, a mistake restarting cannot mend: a missing file, a port or
  endpoint in use, bad keys): never restarted. An ingest's fatal exit fails its stream, a
  spot's every stream it serves: what served only failed streams is stopped, the others
  carry on (a shared spot process keeps serving its other streams); the recognizer's
  fails the run. A run whose every stream failed stops too; `failed` names what failed;
- any other exit is a crash: started again after a backoff (0.5 s, doubled up to 30 s,
  back to 0.5 s once it had run 30 s) and counted in `mfvan_restarts_total{stage,stream}`.
When every source has ended (or failed), the rest get 3 s to drain. It runs on any object
with `start()`, `poll()` and `stop()`, so the policy is tested without processes.

Children die with the supervisor: each asks the kernel for SIGTERM when its parent dies
(PR_SET_PDEATHSIG), so even a supervisor killed with -9 leaves no stage behind.
`shutdown` stops sources first (ingest), then spot, then the recognizer, each given
time to flush what it holds.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mfvan.deploy.runtime.stage import EXIT_FATAL, cameras

log = logging.getLogger("mfvan.run")


@dataclass(frozen=True)
class Backoff:
    """When a child that exited is started again."""

    first_s: float = 0.5
    most_s: float = 30.0
    reset_after_s: float = 30.0  # a child that ran this long starts its backoff over
    drain_s: float = 3.0  # once every source has ended, the others get this long


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _prctl():
    """libc's prctl, looked up in the parent: a forked child with other threads in the
    parent must not call into the dynamic loader before exec."""
    global _PRCTL
    if _PRCTL is None:
        try:
            _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _PRCTL = False  # not Linux: children are stopped by `shutdown` only
    return _PRCTL


_PRCTL = None


def _die_with_parent(prctl, parent: int) -> None:
    """In the child before exec: SIGTERM when the parent dies, and exit now if it already
    has."""
    if prctl:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)


class Child:
    """One stage process: `mfvan <argv...>`. `stage` is ingest, spot or recognize; `stream`
    the stream it serves, its label in logs and metrics ("all" for the recognizer, "a+b"
    for a spot process shared by streams a and b); `streams` the streams it serves (default:
    just `stream`); `env`: variables it gets besides the supervisor's own (its source)."""

    def __init__(
        self,
        stage: str,
        stream: str,
        argv: list[str],
        env: dict | None = None,
        streams: tuple[str, ...] | None = None,
    ):
        self.stage, self.stream, self.argv, self.env = stage, stream, argv, env or {}
        self.streams = streams or (stream,)
        self.name = stage if stream == "all" else f"{stage}-{stream}"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0
        self.backoff = Backoff.first_s
        self.finished = False  # will not run again: its source ended, or it failed
        self.failed = False  # exited EXIT_FATAL (or its stream failed)
        self.started = 0.0

    @property
    def metrics_port(self) -> str | None:
        """The port of the child's /metrics (None: it serves none)."""
        argv = self.argv
        return argv[argv.index("--metrics-port") + 1] if "--metrics-port" in argv else None

    def start(self) -> None:
        env = {**os.environ, **self.env}
        if self.stage in ("ingest", "spot"):  # see mfvan.deploy.runtime.stage.one_thread
            env.setdefault("OPENBLAS_NUM_THREADS", "1")
            env.setdefault("OMP_NUM_THREADS", "1")
        parent, prctl = os.getpid(), _prctl()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mfvan.deploy.cli", *self.argv],
            env=env,
            preexec_fn=lambda: _die_with_parent(prctl, parent),
        )
        self.started = time.monotonic()

    def poll(self) -> int | None:
        """Its exit status once it has exited; None while it runs (or was never started)."""
        return self.proc.poll() if self.proc is not None else None

    def stop(self) -> None:
        """SIGTERM, if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def forwarded(args: argparse.Namespace, *adders, hidden: frozenset = frozenset()) -> list[str]:
    """`mfvan run`'s flags that `adders` (functions adding options to a parser, which
    `mfvan run` calls too) define, as a child's command line: given as given, a repeated
    flag repeated, a flag left at None left out, and the dests in `hidden` (secrets, which
    go by the environment) left out."""
    names = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(names)
    argv = []
    for action in names._actions:
        if action.dest in hidden:
            continue
        value = getattr(args, action.dest, None)
        if isinstance(action, argparse._StoreTrueAction):
            argv += [action.option_strings[0]] if value else []
        elif isinstance(value, list):
            for item in value:
                argv += [action.option_strings[0], str(item)]
        elif value is not None:
            argv += [action.option_strings[0], str(value)]
    return argv


def plan(args: argparse.Namespace, runtime: Path) -> tuple[list[Child], str]:
    """The child processes of `mfvan run` (the recognizer last) and the event endpoint.
    Ports: ingest i on base + 2i, the spot process of streams i.. on base + 2i + 1 (so the
    layout of one spot per stream is unchanged), the recognizer on base + 2N, the
    outputs' process (`forward`, when an output is asked for) on base + 2N + 1, the web
    view's series (with --web) on base + 2N + 2."""
    from mfvan.deploy.commands.recognize import add_model_options
    from mfvan.deploy.runtime.stage import add_security
    from mfvan.stream.ingest import resolve

    named = cameras(args.source)
    names = [name for name, _ in named]
    urls = [resolve(source) for _, source in named]
    ingests = [_ingest(args, runtime, i, url, names[i]) for i, url in enumerate(urls)]
    firsts = range(0, len(urls), args.streams_per_spot)  # each spot process's first stream
    spots = [_spot(args, runtime, i, names[i : i + args.streams_per_spot]) for i in firsts]
    children = []  # each stream's ingest, then its spot process once it serves them all
    for spot in spots:
        children += [c for c in ingests if c.stream in spot.streams] + [spot]
    events = args.events or f"ipc://{runtime}/events.ipc"
    after = args.metrics_base_port + 2 * len(urls)  # the ports after the streams'
    children += _subscribers(args, runtime, events, after, names, firsts)
    recognize = ["recognize", "--out", events, "--metrics-port", str(after)]
    for first in firsts:
        recognize += ["--in", _ipc(runtime, "pairs", first)]
    recognize += forwarded(args, add_model_options, add_security)
    if getattr(args, "with_clips", False) and "--with-crops" not in recognize:
        recognize.append("--with-crops")  # the clip travels with the crops
    children.append(Child("recognize", "all", recognize))
    return children, events


def _ipc(runtime: Path, kind: str, i: int) -> str:
    """The endpoint of stream i's frames, or of the spot process of streams i.. (its pairs,
    its watch), in the run's folder."""
    return f"ipc://{runtime}/{kind}-{i}.ipc"


def _ingest(args: argparse.Namespace, runtime: Path, i: int, url: str, stream: str) -> Child:
    """Stream i's ingest process (its source in its environment: it may hold a password)."""
    own = (getattr(args, "camera_options", None) or {}).get(stream, {})
    frames = _ipc(runtime, "frames", i)
    argv = ["ingest", "--source", "env:MFVAN_SOURCE", "--out", frames, f"--stream={stream}"]
    argv += ["--metrics-port", str(args.metrics_base_port + 2 * i)]
    argv += ["--realtime"] if own.get("realtime", args.realtime) else []
    argv += ["--fps", f"{own['fps']:g}"] if own.get("fps") else []
    return Child("ingest", stream, argv, env={"MFVAN_SOURCE": url})


def _spot(args: argparse.Namespace, runtime: Path, first: int, streams: list[str]) -> Child:
    """The spot process of streams `first`, `first + 1`, ... (`streams`)."""
    argv = ["spot"]
    for i in range(first, first + len(streams)):
        argv += ["--in", _ipc(runtime, "frames", i)]
    argv += ["--out", _ipc(runtime, "pairs", first)]
    argv += ["--metrics-port", str(args.metrics_base_port + 2 * first + 1)]
    if getattr(args, "max_faces", None) is not None:
        argv += ["--max-faces", str(args.max_faces)]
    if getattr(args, "measure_hz", None) is not None:
        argv += ["--measure-hz", f"{args.measure_hz:g}"]
    if getattr(args, "flow_device", "cpu") != "cpu":
        argv += ["--flow-device", args.flow_device]
    argv += ["--clips"] if getattr(args, "with_clips", False) else []
    if getattr(args, "web", None) is not None:
        argv += ["--watch", _ipc(runtime, "watch", first)]
    return Child("spot", "+".join(streams), argv, streams=tuple(streams))


def _subscribers(args, runtime: Path, events: str, after: int, names: list, firsts) -> list:
    """The run's own subscribers: the event store's recorder (--db), the outputs'
    forwarder (any output asked for), the web view (--web)."""
    from mfvan.deploy.commands.forward import add_output_options
    from mfvan.stream.outputs import kinds, secrets_to_env

    # where they connect: a recognizer bound on every interface is reached on loopback
    local = events.replace("://0.0.0.0:", "://127.0.0.1:").replace("://*:", "://127.0.0.1:")
    keys = ["--keys", str(args.keys)] if getattr(args, "keys", None) is not None else []
    db = getattr(args, "db", None)
    children = []
    if db is not None:  # the event store's recorder, a subscriber like any other
        record = ["record", local, "--db", str(db)]
        for flag in ("max_age_days", "max_gb"):
            if getattr(args, flag, None) is not None:
                record += [f"--{flag.replace('_', '-')}", f"{getattr(args, flag):g}"]
        children.append(Child("record", "store", record + keys))
    if any(kind.wanted(args) for kind in kinds()):  # the outputs' flags, passed on as given
        forward = ["forward", local, "--metrics-port", str(after + 1)]
        secret = {dest for kind in kinds() for dest in kind.secrets}
        forward += forwarded(args, add_output_options, hidden=frozenset(secret))
        children.append(Child("forward", "outputs", forward + keys, env=secrets_to_env(args)))
    if getattr(args, "web", None) is not None:  # the web view, a subscriber too
        web = ["web", "--bind", args.web, "--events", local]
        web += ["--metrics", f"http://127.0.0.1:{args.metrics_base_port - 1}/metrics"]
        web += ["--metrics-port", str(after + 2)]  # in the run's aggregate
        for first in firsts:  # each spot process's watch
            web += ["--watch", _ipc(runtime, "watch", first)]
        for name in names:
            web += ["--camera", name]
        web += ["--db", str(db)] if db is not None else []
        web += ["--faces"] if args.web_faces else []
        web += ["--token-file", str(args.token_file)] if args.token_file else []
        children.append(Child("web", "view", web + keys))
    return children


class Aggregate:
    """The run's /metrics: a prometheus_client registry holding the run's own series
    and, fetched from each stage's /metrics at every scrape (in parallel, 127.0.0.1, at
    most `timeout_s`), every stage's series, each sample labelled `process` (the child's
    name: `ingest-cam1`, `spot-cam1+cam2`, `recognize`; `run` for the run's own), so two
    processes' series never collide. `mfvan_stage_up{process,stage}` says whose /metrics
    answered. Prometheus scrapes this one port however many cameras there are: adding a
    camera changes no scrape target."""

    def __init__(self, own, children: list, timeout_s: float = 2.0):
        from prometheus_client import CollectorRegistry

        self.own, self.children, self.timeout_s = own, children, timeout_s
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self):
        from concurrent.futures import ThreadPoolExecutor

        from prometheus_client.core import GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        served = [c for c in self.children if c.metrics_port is not None]
        with ThreadPoolExecutor(min(16, len(served) or 1)) as pool:
            texts = list(pool.map(self._fetch, served))
        merged: dict[str, Metric] = {}

        def add(families, process: str) -> None:
            for family in families:
                into = merged.setdefault(
                    family.name,
                    Metric(family.name, family.documentation, family.type, family.unit),
                )
                if into.type != family.type:
                    continue  # another version's metric of another type: not mixed in
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue  # one per series, each written as its own family: dropped
                    labels = {**sample.labels, "process": process}
                    into.add_sample(sample.name, labels, sample.value, sample.timestamp)

        add(self.own.collect(), "run")
        up = GaugeMetricFamily(
            "mfvan_stage_up",
            "1 when the stage process answered the run's last scrape of its /metrics.",
            labels=["process", "stage"],
        )
        for child, text in zip(served, texts, strict=True):
            up.add_metric([child.name, child.stage], 0.0 if text is None else 1.0)
            if text is not None:
                add(text_string_to_metric_families(text), child.name)
        yield up
        yield from merged.values()

    def _fetch(self, child) -> str | None:
        from mfvan.stream.metrics import fetch

        return fetch(f"http://127.0.0.1:{child.metrics_port}/metrics", self.timeout_s)


# the children that subscribe to the events: one failing fatally fails only itself
OUTPUTS = {
    "record": "the event store",
    "forward": "the MQTT/webhook outputs",
    "web": "the web view",
}


class Supervisor:
    """The restart policy over `children` (see the module's docstring); `restarts` is the
    `mfvan_restarts_total` counter."""

    def __init__(self, children: list, restarts, policy: Backoff = Backoff()):
        self.children, self.restarts, self.policy = children, restarts, policy
        self.drained: float | None = None
        self.failed: list[str] = []  # what failed fatally: streams, or "the recognizer"
        for child in children:
            child.backoff = policy.first_s
            restarts.labels(child.stage, child.stream)  # at zero until one restarts

    def step(self, now: float) -> bool:
        """One poll of every child: restart what crashed and is due, give up on what
        failed. True when the run should stop: every source has ended or failed and the
        rest had their time to drain, or the recognizer failed."""
        for child in self.children:
            code = child.poll()
            if code is not None:
                child.proc = None
                if child.finished:
                    continue  # stopped on purpose: its stream failed
                if code == 0 and child.stage == "ingest":
                    child.finished = True  # a finite source ended: not a crash
                    continue
                if code == EXIT_FATAL:
                    self._fail(child)
                    continue
                if now - child.started > self.policy.reset_after_s:
                    child.backoff = self.policy.first_s  # it had run a while: start over
                log.warning(
                    "run: %s exited with %s; restarting in %.1f s", child.name, code, child.backoff
                )
                child.next_start = now + child.backoff
                child.backoff = min(child.backoff * 2, self.policy.most_s)
                child.restarts += 1
                self.restarts.labels(child.stage, child.stream).inc()
            if child.proc is None and not child.finished and now >= child.next_start:
                child.start()
        if "the recognizer" in self.failed:
            return True
        if all(c.finished for c in self.children if c.stage == "ingest"):
            self.drained = self.drained or now + self.policy.drain_s
            if now >= self.drained:
                log.info("run: every source has ended; stopping")
                return True
        return False

    def _fail(self, child) -> None:
        """A child exited EXIT_FATAL: it and its streams are done, and so is every other
        child that served only failed streams."""
        if child.stage in OUTPUTS:
            what = OUTPUTS[child.stage]
            log.error("run: %s failed (see its message above); events go on", what)
            self.failed.append(what)
            child.finished = child.failed = True
            return
        if child.stream == "all":
            log.error("run: the recognizer failed (see its message above); stopping the run")
            self.failed.append("the recognizer")
            child.finished = child.failed = True
            return
        log.error(
            "run: %s failed (see its message above): stream %s stops, the others go on",
            child.name,
            ", ".join(child.streams),
        )
        self.failed += [s for s in child.streams if s not in self.failed]
        child.finished = child.failed = True
        for other in self.children:
            if other.stream != "all" and set(other.streams) <= set(self.failed):
                if not other.finished:
                    other.finished = other.failed = True
                    other.stop()


def is_ready(child: Child) -> bool:
    """Whether the child's /ready answers 200 now (it has bound its sockets and compiled
    what it needs)."""
    from mfvan.stream.metrics import fetch

    return fetch(f"http://127.0.0.1:{child.metrics_port}/ready", timeout_s=1) is not None


def wait_ready(child: Child, timeout_s: float, stop=None) -> bool:
    """Until the child's /ready answers 200, or it dies, or `stop` is set."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
        if stop is not None and stop.is_set():
            return False
        if is_ready(child):
            return True
        time.sleep(0.2)
    return False


def shutdown(children: list, timeout_s: float = 3.0) -> None:
    """Stop the children in the frames' order: every ingest first (sources end and send
    what they hold), then spot, then the recognizer, then the event's subscribers (the
    recorder commits what it holds), each stage given `timeout_s` to end after SIGTERM
    before it is killed."""
    for stage in ("ingest", "spot", "recognize", *OUTPUTS):
        group = [c for c in children if c.stage == stage and c.proc is not None]
        for child in group:
            child.stop()
        deadline = time.monotonic() + timeout_s
        for child in group:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("run: %s did not stop; killing it", child.name)
                child.proc.kill()
                child.proc.wait()


class RuntimeDir:
    """The folder of a run's ipc:// sockets: made 0700 by the run (or, when given,
    refused if another user owns it or others may write in it: whoever can write there can
    bind `events.ipc` and feed forged events to subscribers); locked, so a second run
    cannot share it and steal its sockets; on exit its sockets and lock are removed, and
    the folder too when the run made it. A context manager."""

    LOCK = ".mfvan-run.lock"

    def __init__(self, path: Path | None = None):
        import tempfile

        from mfvan.deploy.runtime.stage import Fatal

        self.made = path is None or not Path(path).exists()
        if path is None:
            path = Path(tempfile.mkdtemp(prefix="mfvan-"))  # 0700 already
        self.path = Path(path)
        if self.made:
            try:
                self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                raise Fatal(f"cannot make the runtime folder {path}: {e.strerror}") from None
            self.path.chmod(0o700)
        if not self.path.is_dir():
            raise Fatal(f"runtime folder {path} is not a folder")
        info = self.path.stat()
        if info.st_uid != os.getuid():
            raise Fatal(
                f"runtime folder {path} belongs to another user (uid {info.st_uid}): "
                "they could bind its sockets; use a folder of your own"
            )
        if info.st_mode & 0o022:
            raise Fatal(
                f"runtime folder {path} is writable by others (mode "
                f"{info.st_mode & 0o777:o}): chmod 700 it or use another"
            )
        self._lock = None

    def __enter__(self) -> Path:
        import fcntl

        from mfvan.deploy.runtime.stage import Fatal

        self._lock = open(self.path / self.LOCK, "w")  # noqa: SIM115 (held while running)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise Fatal(
                f"runtime folder {self.path} is in use by another mfvan run; give each "
                "run its own --runtime-dir"
            ) from None
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        return self.path

    SOCKETS = ("frames-*.ipc", "pairs-*.ipc", "watch-*.ipc", "events.ipc")  # what `plan` makes

    def __exit__(self, *exc) -> None:
        for pattern in self.SOCKETS:
            for sock in self.path.glob(pattern):
                sock.unlink(missing_ok=True)
        (self.path / self.LOCK).unlink(missing_ok=True)
        self._lock.close()
        if self.made:
            try:
                self.path.rmdir()
            except OSError:
                log.warning("run: left %s (it holds files of someone else)", self.path)
