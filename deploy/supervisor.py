"""`mfvan run`'s supervisor: the stage processes it starts, what it does when one exits,
and how it stops them.

`plan` turns `mfvan run`'s flags into child commands: one ingest and one spot process per
`--source`, one recognizer for all of them, which gets `mfvan run`'s recognizer flags as
they were given (`forwarded`). `Supervisor.step` is the restart policy, one poll of every
child: a child that exits is started again after a backoff (0.5 s, doubled up to 30 s,
back to 0.5 s once it had run 30 s) and counted in `mfvan_restarts_total{stage,stream}`;
an ingest that exits 0 had a finite source that ended, which is not a crash. When every
source has ended, the rest get 3 s to drain. It runs on any object with `start()` and
`poll()`, so the policy is tested without processes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mfvan.deploy.stage import stream_name

log = logging.getLogger("mfvan.run")


@dataclass(frozen=True)
class Backoff:
    """When a child that exited is started again."""

    first_s: float = 0.5
    most_s: float = 30.0
    reset_after_s: float = 30.0  # a child that ran this long starts its backoff over
    drain_s: float = 3.0  # once every source has ended, the others get this long


class Child:
    """One stage process: `mfvan <argv...>`. `stage` is ingest, spot or recognize; `stream`
    the stream it serves ("all" for the recognizer)."""

    def __init__(self, stage: str, stream: str, argv: list[str]):
        self.stage, self.stream, self.argv = stage, stream, argv
        self.name = stage if stream == "all" else f"{stage}-{stream}"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0
        self.backoff = Backoff.first_s
        self.finished = False
        self.started = 0.0

    def start(self) -> None:
        env = dict(os.environ)
        if self.stage in ("ingest", "spot"):  # see mfvan.deploy.stage.one_thread
            env.setdefault("OPENBLAS_NUM_THREADS", "1")
            env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mfvan.deploy.cli", *self.argv], env=env
        )
        self.started = time.monotonic()

    def poll(self) -> int | None:
        """Its exit status once it has exited; None while it runs (or was never started)."""
        return self.proc.poll() if self.proc is not None else None


def forwarded(args: argparse.Namespace) -> list[str]:
    """`mfvan run`'s recognizer flags (`mfvan.deploy.commands.recognize.add_model_options`,
    which `mfvan run` offers too) and security flags, as the recognizer's command line."""
    from mfvan.deploy.commands.recognize import add_model_options
    from mfvan.deploy.stage import add_security

    names = argparse.ArgumentParser(add_help=False)
    add_model_options(names)
    add_security(names)
    argv = []
    for action in names._actions:
        value = getattr(args, action.dest)
        if isinstance(action, argparse._StoreTrueAction):
            argv += [action.option_strings[0]] if value else []
        elif value is not None:
            argv += [action.option_strings[0], str(value)]
    return argv


def plan(args: argparse.Namespace, runtime: Path) -> tuple[list[Child], str]:
    """The child processes of `mfvan run` (the recognizer last) and the event endpoint."""
    port = args.metrics_base_port
    children, pair_endpoints = [], []
    for i, source in enumerate(args.source):
        stream = stream_name(source)
        if sum(stream_name(s) == stream for s in args.source) > 1:
            stream = f"{stream}-{i}"
        frames = f"ipc://{runtime}/frames-{i}.ipc"
        pairs = f"ipc://{runtime}/pairs-{i}.ipc"
        pair_endpoints.append(pairs)
        ingest = ["ingest", "--source", source, "--out", frames, "--stream", stream]
        ingest += ["--metrics-port", str(port)] + (["--realtime"] if args.realtime else [])
        spot = ["spot", "--in", frames, "--out", pairs, "--metrics-port", str(port + 1)]
        children += [Child("ingest", stream, ingest), Child("spot", stream, spot)]
        port += 2
    events = args.events or f"ipc://{runtime}/events.ipc"
    recognize = ["recognize", "--out", events, "--metrics-port", str(port)]
    for endpoint in pair_endpoints:
        recognize += ["--in", endpoint]
    children.append(Child("recognize", "all", recognize + forwarded(args)))
    return children, events


class Supervisor:
    """The restart policy over `children` (see the module's docstring); `restarts` is the
    `mfvan_restarts_total` counter."""

    def __init__(self, children: list, restarts, policy: Backoff = Backoff()):
        self.children, self.restarts, self.policy = children, restarts, policy
        self.drained: float | None = None
        for child in children:
            child.backoff = policy.first_s
            restarts.labels(child.stage, child.stream)  # at zero until one restarts

    def step(self, now: float) -> bool:
        """One poll of every child: restart what exited and is due. True once every source
        has ended and the rest had their time to drain: stop."""
        for child in self.children:
            code = child.poll()
            if code is not None:
                child.proc = None
                if code == 0 and child.stage == "ingest":
                    child.finished = True  # a finite source ended: not a crash
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
        if all(c.finished for c in self.children if c.stage == "ingest"):
            self.drained = self.drained or now + self.policy.drain_s
            if now >= self.drained:
                log.info("run: every source has ended; stopping")
                return True
        return False


def wait_ready(child: Child, timeout_s: float) -> bool:
    """Until the child's /metrics answers (it serves them once ready), or it dies."""
    import urllib.request

    port = child.argv[child.argv.index("--metrics-port") + 1]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
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
