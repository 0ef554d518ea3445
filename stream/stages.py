"""The three stages' loops: ingest (source -> frames), spot (frames -> pairs) and
recognize (pairs -> events). Each runs alone in its own process (`mfvan ingest|spot|
recognize`), or as a child of `mfvan run`.

Sockets: a stage binds its output and connects to its inputs, so stages start in any
order and a restarted one is found again. Frames and pairs travel PUSH -> PULL (one
consumer takes each message); events are PUB, so any number of subscribers can listen.
Every send is non-blocking: when the consumer's high-water mark is reached the message is
dropped and counted (`reason="hwm"`). A message that does not decode is dropped and
counted with its reason; the stage goes on. Each stage stops when `stop` is set (the CLI
sets it on SIGINT / SIGTERM), sends what it holds, and closes its sockets.

The stage logic (`SpotStage.handle`, `Batcher`) is separate from the socket loops, so
tests drive it directly as well as over real sockets.

Imports nothing of model/ or deploy/: the recognizer receives a backend object.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import zmq

from mfvan.kernels.facespot import FaceSpotter
from mfvan.kernels.spotter import REJECTIONS, SpotterParams

from . import protocol, security
from .messages import Pair, event_header
from .metrics import Metrics

log = logging.getLogger("mfvan.stream")
HWM = 64  # messages queued per socket at most (frames at 200 fps: a third of a second)


def _socket(ctx: zmq.Context, kind: int, hwm: int = HWM) -> zmq.Socket:
    s = ctx.socket(kind)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, 500)
    return s


def _decode(frames, stage: str, metrics: Metrics) -> protocol.Message | None:
    """The message, or None after counting and logging why it was dropped."""
    try:
        return protocol.decode(frames)
    except protocol.Malformed as e:
        metrics.dropped.labels(stage, "", e.reason).inc()
        log.warning("%s: dropped a message: %s", stage, e)
        return None


def _unguard(guard, metrics: Metrics, stage: str) -> None:
    """Stop a bound socket's CURVE guard, counting the clients it refused."""
    if guard is not None:
        metrics.dropped.labels(stage, "", "unauthorized").inc(guard.refused)
        guard.stop()


def _poll_loop(socket: zmq.Socket, stop: threading.Event, timeout_ms: int = 100):
    """Yield each received multipart message (raw frames) until `stop` is set."""
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(timeout_ms):
            yield protocol.recv_parts(socket)


# ----------------------------------------------------------------------------- ingest


def run_ingest(
    source,
    stream_id: str,
    out: str,
    metrics: Metrics,
    stop: threading.Event,
    ctx: zmq.Context | None = None,
    block: bool = False,
    keys=None,
) -> None:
    """Send every frame of `source` (an iterable of `ingest.Frame`) to `out`.

    A live source never waits for the consumer: a frame that finds the queue full is
    dropped and counted. With `block` (a file played as fast as possible), the source
    waits for the consumer instead, so no frame is lost."""
    ctx = ctx or zmq.Context.instance()
    sock = _socket(ctx, zmq.PUSH)
    guard = security.guard(ctx, sock, out, keys)
    sock.bind(out)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLOUT)
    seq = 0
    metrics.init_stream(stream_id)
    try:
        for frame in source:
            if stop.is_set():
                break
            while block and not stop.is_set() and not poller.poll(100):
                pass  # wait until the consumer has room
            if stop.is_set():
                break
            metrics.frames_in.labels("ingest", stream_id).inc()
            sent = protocol.send(
                sock,
                "frame",
                stream_id,
                seq,
                [frame.image],
                formats=["grey" if frame.image.ndim == 2 else "rgb24"],
                index=frame.index,
                t_capture=frame.t_capture,
                t_media=frame.t_capture if frame.t_media is None else frame.t_media,
                key_frame=frame.key_frame,
                t_ingest=time.time_ns(),
                **frame.fields,
            )
            seq += 1
            if sent:
                metrics.frames_out.labels("ingest", stream_id).inc()
            else:
                metrics.dropped.labels("ingest", stream_id, "hwm").inc()
        protocol.send(sock, "eos", stream_id, seq)
    finally:
        _unguard(guard, metrics, "ingest")
        # zero-copy frames must go out before their arrays do: wait for them here,
        # not in the interpreter's teardown
        sock.close(linger=2000)


# ----------------------------------------------------------------------------- spot


@dataclass
class _Track:
    spots: FaceSpotter
    rejected: dict = field(default_factory=dict)


class SpotStage:
    """Per stream: track the face, crop, spot. `handle(message)` returns the pairs that
    frame completed."""

    def __init__(self, metrics: Metrics, size: int = 128, params: SpotterParams | None = None):
        self.metrics = metrics
        self.size = size
        self.params = params
        self.tracks: dict[str, _Track] = {}
        self.seq: dict[str, int] = {}

    def _track(self, stream: str) -> _Track:
        if stream not in self.tracks:
            self.metrics.init_stream(stream, rejections=REJECTIONS)
            self.tracks[stream] = _Track(FaceSpotter(self.params, self.size, background=True))
        return self.tracks[stream]

    def handle(self, msg: protocol.Message) -> list[Pair]:
        m, stream = self.metrics, msg.stream
        m.frames_in.labels("spot", stream).inc()
        if msg.kind == "eos":
            self.tracks.pop(stream, None)
            return []
        if msg.kind != "frame" or len(msg.arrays) != 1:
            m.dropped.labels("spot", stream, "unexpected").inc()
            return []
        track = self._track(stream)
        f = msg.fields
        t_capture = f.get("t_capture", 0)
        # the spotter works in media time; a producer without it gets capture time
        t_media = f.get("t_media", t_capture)
        index = f.get("index", msg.seq)
        intervals = track.spots.push(msg.arrays[0], index, t_media, bool(f.get("key_frame")))
        m.faces.labels(stream).set(1 if track.spots.has_face else 0)
        out = []
        for it in intervals:
            seq = self.seq.get(stream, 0)
            self.seq[stream] = seq + 1
            m.spots.labels(stream).inc()
            out.append(
                Pair(
                    stream,
                    seq,
                    it.onset_crop,
                    it.apex_crop,
                    it.onset,
                    it.apex,
                    it.offset,
                    # media times, and the same moments on the capture clock (latency)
                    media_onset=it.onset_ns,
                    media_apex=it.apex_ns,
                    media_offset=it.offset_ns,
                    t_onset=t_capture - (t_media - it.onset_ns),
                    t_apex=t_capture - (t_media - it.apex_ns),
                    t_offset=t_capture - (t_media - it.offset_ns),
                    t_capture=t_capture,
                    t_ingest=msg.fields.get("t_ingest", 0),
                    score=float(it.score),
                    amplitude=float(it.amplitude),
                    region=it.region,
                    spot_latency_ns=int(it.latency_ns),
                    truth=msg.fields.get("truth"),
                )
            )
        for reason, n in track.spots.rejected.items():
            seen = track.rejected.get(reason, 0)
            if n > seen:
                m.spots_rejected.labels(stream, reason).inc(n - seen)
                track.rejected[reason] = n
        return out


def run_spot(
    inputs: list[str],
    out: str,
    metrics: Metrics,
    stop: threading.Event,
    ctx: zmq.Context | None = None,
    params: SpotterParams | None = None,
    keys=None,
) -> None:
    """Frames from `inputs` (connected) -> pairs to `out` (bound)."""
    ctx = ctx or zmq.Context.instance()
    pull = _socket(ctx, zmq.PULL)
    security.secure_client(pull, inputs, keys)
    for endpoint in inputs:
        pull.connect(endpoint)
    push = _socket(ctx, zmq.PUSH)
    guard = security.guard(ctx, push, out, keys)
    push.bind(out)
    stage = SpotStage(metrics, params=params)
    try:
        for frames in _poll_loop(pull, stop):
            started = time.time_ns()
            msg = _decode(frames, "spot", metrics)
            if msg is None:
                continue
            if "t_ingest" in msg.fields:
                metrics.transit.labels("spot").observe((started - msg.fields["t_ingest"]) / 1e9)
            for pair in stage.handle(msg):
                pair.t_spot = time.time_ns()
                # pairs are rare and precious: wait a little for a slow recognizer
                if pair.send(push, wait_ms=1000):
                    metrics.frames_out.labels("spot", pair.stream).inc()
                else:
                    metrics.dropped.labels("spot", pair.stream, "hwm").inc()
            metrics.stage_seconds.labels("spot").observe((time.time_ns() - started) / 1e9)
    finally:
        _unguard(guard, metrics, "spot")
        pull.close()
        push.close()


# ----------------------------------------------------------------------------- recognize


class Batcher:
    """Pairs from any streams, released as batches of at most `max_batch`, or sooner once
    the oldest has waited `max_wait_s`."""

    def __init__(self, max_batch: int = 8, max_wait_s: float = 0.01):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.items: list = []
        self._oldest = 0.0

    def add(self, item, now: float) -> None:
        if not self.items:
            self._oldest = now
        self.items.append(item)

    def due(self, now: float) -> bool:
        return bool(self.items) and (
            len(self.items) >= self.max_batch or now - self._oldest >= self.max_wait_s
        )

    def take(self) -> list:
        batch, self.items = self.items[: self.max_batch], self.items[self.max_batch :]
        return batch

    def wait_s(self, now: float) -> float:
        """How long until the current batch is due (the poll timeout)."""
        if not self.items:
            return self.max_wait_s
        return max(0.0, self.max_wait_s - (now - self._oldest))


class Classifier(NamedTuple):
    """What the recognizer classifies with: a backend (`mfvan.deploy.backends.Backend`:
    uint8 onset and apex crops in, class probabilities out), its class names, and the model
    version each event names."""

    backend: object
    classes: list[str]
    version: str


def run_recognize(
    inputs: list[str],
    out: str,
    classifier: Classifier,
    metrics: Metrics,
    stop: threading.Event,
    ctx: zmq.Context | None = None,
    max_batch: int = 8,
    max_wait_s: float = 0.0,
    with_crops: bool = False,
    keys=None,
    event_hwm: int = 1000,
) -> None:
    """Pairs from `inputs` (connected) -> events published on `out` (bound PUB); with
    `keys` (a `mfvan keys` folder) its tcp:// endpoints use CURVE: only authorized
    subscribers get events, and it connects to CURVE-guarded spot stages.

    Batching: a batch is whatever pairs are queued when the recognizer looks (at most
    `max_batch`), so under load batches fill while the previous one runs; `max_wait_s`
    (default 0: pairs are rare, each one's latency counts) makes a partial batch wait
    that long for company.

    Events go out on PUB, which never waits for a subscriber: one that falls `event_hwm`
    events behind loses the next ones (it sees the gaps in their numbering)."""
    ctx = ctx or zmq.Context.instance()
    pull = _socket(ctx, zmq.PULL)
    security.secure_client(pull, inputs, keys)
    for endpoint in inputs:
        pull.connect(endpoint)
    pub = _socket(ctx, zmq.PUB, hwm=event_hwm)
    guard = security.guard(ctx, pub, out, keys)
    pub.bind(out)
    batcher = Batcher(max_batch, max_wait_s)
    seen: set[str] = set()  # streams whose series exist
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    seq: dict[str, int] = {}

    def infer(batch):
        _infer(batch, classifier, metrics, pub, seq, with_crops)

    try:
        while not stop.is_set():
            timeout = 100 if not batcher.items else batcher.wait_s(time.monotonic()) * 1000
            if poller.poll(max(int(timeout), 0)):
                # take everything already queued (up to a batch): under load, batches form
                # while the previous one runs, without waiting
                while len(batcher.items) < batcher.max_batch:
                    try:
                        frames = protocol.recv_parts(pull, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    _take(frames, batcher, metrics, seen, classifier.classes)
            metrics.queue_depth.labels("recognize").set(len(batcher.items))
            while batcher.due(time.monotonic()):
                infer(batcher.take())
    finally:
        while batcher.items:
            infer(batcher.take())
        _unguard(guard, metrics, "recognize")
        pull.close()
        pub.close()


def _take(frames, batcher: Batcher, metrics: Metrics, seen: set, classes) -> None:
    """One received message into the batch, or dropped and counted."""
    received = time.time_ns()
    msg = _decode(frames, "recognize", metrics)
    if msg is None:
        return
    if msg.stream not in seen:
        seen.add(msg.stream)
        metrics.init_stream(msg.stream, classes)
    metrics.frames_in.labels("recognize", msg.stream).inc()
    if msg.kind != "pair" or len(msg.arrays) != 2:
        metrics.dropped.labels("recognize", msg.stream, "unexpected").inc()
        return
    if "t_spot" in msg.fields:
        metrics.transit.labels("recognize").observe((received - msg.fields["t_spot"]) / 1e9)
    batcher.add((msg, received), time.monotonic())


def _infer(batch, classifier: Classifier, metrics, pub, seq: dict, with_crops: bool) -> None:
    """Classify one batch and publish an event per pair."""
    backend, classes = classifier.backend, classifier.classes
    onset = np.stack([m.arrays[0] for m, _ in batch])
    apex = np.stack([m.arrays[1] for m, _ in batch])
    started = time.perf_counter()
    probs = backend(onset, apex)
    metrics.inference.labels(backend.name).observe(time.perf_counter() - started)
    metrics.batch_size.observe(len(batch))
    for (msg, received), p in zip(batch, probs, strict=True):
        label = classes[int(np.argmax(p))]
        now = time.time_ns()
        fields = event_header(
            msg.fields,
            label=label,
            probs=[float(x) for x in p],
            classes=list(classes),
            model=classifier.version,
            batch=len(batch),
            t_received=received,
            t_recognize=now,
        )
        n = seq.get(msg.stream, 0)
        seq[msg.stream] = n + 1
        arrays = [np.array(a) for a in msg.arrays] if with_crops else []
        protocol.send(pub, "event", msg.stream, n, arrays, **fields)
        metrics.events.labels(msg.stream, label).inc()
        metrics.frames_out.labels("recognize", msg.stream).inc()
        metrics.stage_seconds.labels("recognize").observe((now - received) / 1e9)
        if msg.fields.get("t_capture"):  # the capture of the frame that confirmed the apex
            metrics.end_to_end.labels("recognize").observe((now - msg.fields["t_capture"]) / 1e9)
