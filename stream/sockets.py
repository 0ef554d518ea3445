"""What every stage's loop shares: its sockets (high-water marks, size limit, keepalive;
bound under CURVE when asked, dialled as a stage), decoding with every dropped message
counted, rate-limited warnings (a flood of bad messages must not become a flood of log
lines), bounded state per stream, and the poll loop. Used by `stages` (ingest, spot) and
`recognizer`.

Imports nothing of model/ or deploy/.
"""

from __future__ import annotations

import logging
import threading
import time

import zmq

from . import protocol, security
from .metrics import Metrics

log = logging.getLogger("mfvan.stream")
HWM = 64  # messages queued per socket at most (frames at 200 fps: a third of a second)


def socket(ctx: zmq.Context, kind: int, hwm: int = HWM) -> zmq.Socket:
    """A stage's socket of `kind`: `hwm` messages queued each way at most, a short linger,
    no message over the protocol's largest, TCP keepalive."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, 500)
    # no part larger than the largest legal frame reaches memory (ZeroMQ drops the peer)
    s.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE)
    security.keepalive(s)
    return s


class RateLimited:
    """Warnings at most once per `every_s` per key, with a count of those held back: a
    flood of bad messages must not become a flood of log lines."""

    def __init__(self, logger: logging.Logger = log, every_s: float = 10.0):
        self.logger, self.every_s = logger, every_s
        self.last: dict[str, float] = {}
        self.held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args, exc_info=False) -> None:
        now = time.monotonic()
        if now - self.last.get(key, -self.every_s) < self.every_s:
            self.held[key] = self.held.get(key, 0) + 1
            return
        held = self.held.pop(key, 0)
        self.last[key] = now
        more = f" ({held} more like it in the last {self.every_s:.0f} s)" if held else ""
        self.logger.warning(message + more, *args, exc_info=exc_info)


warn = RateLimited()


def decode(frames, stage: str, metrics: Metrics) -> protocol.Message | None:
    """The message, or None after counting and logging why it was dropped."""
    try:
        return protocol.decode(frames)
    except protocol.Malformed as e:
        metrics.dropped.labels(stage, "", e.reason).inc()
        warn.warning(f"{stage}:{e.reason}", "%s: dropped a message: %s", stage, e)
        return None


class Streams:
    """A stage's state per stream, bounded: at most `most` streams known at once (`get`
    returns None for one more, and the caller drops its message). A stream that ended
    (`drop`, on eos) loses its state at once; a stream that sent nothing for `idle_s` is
    forgotten altogether (`expire`): state, and its metric series through `forget(stream)`
    (kept until then, so that a scrape after a file's end still sees its final counts).
    `new(stream)` makes a stream's state."""

    def __init__(self, new, forget, most: int = 64, idle_s: float = 60.0):
        if most < 1 or idle_s <= 0:
            raise ValueError(f"max streams >= 1 and idle time > 0, got {most}, {idle_s}")
        self.new, self.forget, self.most, self.idle_s = new, forget, most, idle_s
        self.state: dict[str, object] = {}
        self.seen: dict[str, float] = {}  # every known stream: when it last sent

    def get(self, stream: str, now: float):
        if stream not in self.state:
            if stream not in self.seen and len(self.seen) >= self.most:
                self.expire(now)
                if len(self.seen) >= self.most:
                    return None
            self.state[stream] = self.new(stream)
        self.seen[stream] = now
        return self.state[stream]

    def expire(self, now: float) -> list[str]:
        """Forget the streams idle for longer than `idle_s`; returns them."""
        idle = [s for s, t in self.seen.items() if now - t > self.idle_s]
        for stream in idle:
            self.state.pop(stream, None)
            del self.seen[stream]
            self.forget(stream)
        return idle

    def drop(self, stream: str) -> None:
        """The stream ended: its state goes now, its series once it is idle."""
        self.state.pop(stream, None)

    def __len__(self) -> int:
        return len(self.seen)


def too_many(stage: str, stream: str, metrics: Metrics, most: int) -> None:
    metrics.dropped.labels(stage, "", "streams").inc()
    warn.warning(
        f"{stage}:streams",
        "%s: dropped a message of stream %.40r: already %d streams (--max-streams)",
        stage,
        stream,
        most,
    )


def serve(ctx, sock, out: str, keys, metrics: Metrics, stage: str, role: str = "stage"):
    """Bind `sock` to `out`, under CURVE when `keys` are given and it is tcp:// (the guard
    is set up before the bind, as CURVE needs), letting in the clients of `role`; each
    refused handshake is counted (`reason="unauthorized"`) and logged, rate-limited, as
    it happens. Returns the guard (None without CURVE), for `unguard`."""

    def refused():
        metrics.dropped.labels(stage, "", "unauthorized").inc()
        warn.warning(
            f"{stage}:unauthorized",
            "%s: refused a CURVE handshake on %s (a key not in authorized/%s)",
            stage,
            out,
            security.ROLES[role],
        )

    guard = security.guard(ctx, sock, out, keys, refused, role)
    try:
        security.bind(sock, out)
    except BaseException:
        unguard(guard)
        raise
    return guard


def dial(sock, inputs: list[str], keys) -> None:
    """Connect `sock` to every endpoint of `inputs`, as a stage (CURVE with `keys` on
    tcp://)."""
    security.secure_client(sock, inputs, keys, role="stage")
    for endpoint in inputs:
        security.connect(sock, endpoint)


def unguard(guard) -> None:
    """Stop a bound socket's CURVE guard (it counted refused clients as they came)."""
    if guard is not None:
        guard.stop()


def poll_loop(socket: zmq.Socket, stop: threading.Event, timeout_ms: int = 100):
    """Yield each received multipart message (raw frames) until `stop` is set, and None
    after each `timeout_ms` without one."""
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(timeout_ms):
            yield protocol.recv_parts(socket)
        else:
            yield None
