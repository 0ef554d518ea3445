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

No message can stop a stage: `protocol.decode` refuses what its kind's schema forbids,
and a message the stage's own logic still fails on is dropped and counted
(`reason="error"`); in the recognizer one bad pair never takes its batch down (the batch
is run again pair by pair). Warnings about dropped messages are rate-limited. State per
stream is bounded (`Streams`): at most `max_streams` streams at once (the excess refused,
`reason="streams"`), and a stream that ended (`eos`) or sent nothing for `idle_s` is
forgotten with its metric series.

A stage binds its sockets inside its guarded path: a failure to bind or connect (an
address in use, an endpoint ZeroMQ refuses, unusable keys) raises
`security.EndpointError` to the caller, which reports it in one line and ends ZeroMQ
without waiting on the unbound sockets (`mfvan.deploy.stage.run_stage`). Once bound,
the stage sets `metrics.ready` (its `/ready` answers 200).

The stage logic (`SpotStage.handle`, `Batcher`) is separate from the socket loops, so
tests drive it directly as well as over real sockets.

Imports nothing of model/ or deploy/: the recognizer receives a backend object.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import zmq

from mfvan.kernels.facespot import FaceSpotter
from mfvan.kernels.motion import wire_flow
from mfvan.kernels.spotter import REJECTIONS, SpotterParams

from . import protocol, security
from .messages import Pair, event_header, uuid7
from .metrics import Metrics

CLIP_MARGIN_S = 0.5  # a clip starts this long before the onset (`mfvan spot --clips`)
CLIP_SPAN_S = 3.0  # and a spot stage keeps this much more of each stream's crops for it

log = logging.getLogger("mfvan.stream")
HWM = 64  # messages queued per socket at most (frames at 200 fps: a third of a second)


DRAIN_S = 60.0  # how long a file's ingest waits at its end for its queued frames to go


def _socket(ctx: zmq.Context, kind: int, hwm: int = HWM) -> zmq.Socket:
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


_warn = RateLimited()


def _decode(frames, stage: str, metrics: Metrics) -> protocol.Message | None:
    """The message, or None after counting and logging why it was dropped."""
    try:
        return protocol.decode(frames)
    except protocol.Malformed as e:
        metrics.dropped.labels(stage, "", e.reason).inc()
        _warn.warning(f"{stage}:{e.reason}", "%s: dropped a message: %s", stage, e)
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


def _too_many(stage: str, stream: str, metrics: Metrics, most: int) -> None:
    metrics.dropped.labels(stage, "", "streams").inc()
    _warn.warning(
        f"{stage}:streams",
        "%s: dropped a message of stream %.40r: already %d streams (--max-streams)",
        stage,
        stream,
        most,
    )


def _serve(ctx, sock, out: str, keys, metrics: Metrics, stage: str, role: str = "stage"):
    """Bind `sock` to `out`, under CURVE when `keys` are given and it is tcp:// (the guard
    is set up before the bind, as CURVE needs), letting in the clients of `role`; each
    refused handshake is counted (`reason="unauthorized"`) and logged, rate-limited, as
    it happens. Returns the guard (None without CURVE), for `_unguard`."""

    def refused():
        metrics.dropped.labels(stage, "", "unauthorized").inc()
        _warn.warning(
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
        _unguard(guard)
        raise
    return guard


def _dial(sock, inputs: list[str], keys) -> None:
    """Connect `sock` to every endpoint of `inputs`, as a stage (CURVE with `keys` on
    tcp://)."""
    security.secure_client(sock, inputs, keys, role="stage")
    for endpoint in inputs:
        security.connect(sock, endpoint)


def _unguard(guard) -> None:
    """Stop a bound socket's CURVE guard (it counted refused clients as they came)."""
    if guard is not None:
        guard.stop()


def _poll_loop(socket: zmq.Socket, stop: threading.Event, timeout_ms: int = 100):
    """Yield each received multipart message (raw frames) until `stop` is set, and None
    after each `timeout_ms` without one."""
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(timeout_ms):
            yield protocol.recv_parts(socket)
        else:
            yield None


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
    waits for the consumer instead, so no frame is lost, not even the file's last ones:
    at the end the socket lingers up to `DRAIN_S` for the frames still queued (two queues
    of `HWM` frames, which a loaded spot stage serving several streams can take seconds
    to work through), where a live source's gets 2 s."""
    ctx = ctx or zmq.Context.instance()
    sock = _socket(ctx, zmq.PUSH)
    guard = None
    seq = 0
    try:
        guard = _serve(ctx, sock, out, keys, metrics, "ingest")
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLOUT)
        metrics.init_stream(stream_id)
        metrics.ready.set()
        # the labelled counters, bound once: `labels()` costs 2 us a call, a tenth of a
        # frame's whole send
        counted = metrics.frames_in.labels("ingest", stream_id)
        sent_out = metrics.frames_out.labels("ingest", stream_id)
        full = metrics.dropped.labels("ingest", stream_id, "hwm")
        for frame in source:
            if stop.is_set():
                break
            while block and not stop.is_set() and not poller.poll(100):
                pass  # wait until the consumer has room
            if stop.is_set():
                break
            counted.inc()
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
            (sent_out if sent else full).inc()
        protocol.send(sock, "eos", stream_id, seq)
    finally:
        _unguard(guard)
        # zero-copy frames must go out before their arrays do: wait for them here,
        # not in the interpreter's teardown
        sock.close(linger=int(1000 * (DRAIN_S if block and not stop.is_set() else 2.0)))


# ----------------------------------------------------------------------------- spot


@dataclass
class _Track:
    spots: FaceSpotter
    counted: object  # the stream's frames_in, faces and latency series, bound once
    face: object  # (`labels()` costs 2 us a call)
    transit: object
    seconds: object
    rejected: dict = field(default_factory=dict)
    seq: int = 0  # pairs sent
    recent: deque | None = None  # (media time, face crop) of the last seconds, for clips
    faceless: int = 0  # frames in a row without a face
    warned: bool = False  # that the stream shows no face


class SpotStage:
    """Per stream: track the face, crop, spot. `handle(message)` returns the pairs that
    frame completed. At most `max_streams` streams at once; a stream idle for `idle_s` or
    ended (`eos`) is forgotten (`Streams`)."""

    NO_FACE_FRAMES = 500  # frames without a face before the stage says so in the log

    def __init__(
        self,
        metrics: Metrics,
        size: int = 128,
        params: SpotterParams | None = None,
        max_streams: int = 64,
        idle_s: float = 60.0,
        clip_s: float = 0.0,
        flow_device: str = "cpu",
    ):
        self.metrics = metrics
        self.size = size
        self.params = params
        self.clip_s = clip_s
        self.flow_fn = None  # the spotter's own CPU kernel
        if flow_device == "cuda":  # the same method on the GPU (mfvan.kernels.flow_cuda)
            from mfvan.kernels import flow_cuda
            from mfvan.kernels.spotter import SpotterParams

            self.flow_fn = flow_cuda.flow_fn((params or SpotterParams()).flow)
        self.streams = Streams(self._new, metrics.forget_stream, max_streams, idle_s)

    def _new(self, stream: str) -> _Track:
        m = self.metrics
        m.init_stream(stream, rejections=REJECTIONS)
        spots = FaceSpotter(self.params, self.size, background=True, flow_fn=self.flow_fn)
        return _Track(
            spots,
            m.frames_in.labels("spot", stream),
            m.faces.labels(stream),
            m.transit.labels("spot", stream),
            m.stage_seconds.labels("spot", stream),
            recent=deque(maxlen=protocol.MAX_CLIP) if self.clip_s else None,
        )

    @property
    def tracks(self) -> dict[str, _Track]:
        return self.streams.state

    def handle(self, msg: protocol.Message, now: float | None = None) -> list[Pair]:
        m, stream = self.metrics, msg.stream
        now = time.monotonic() if now is None else now
        if msg.kind == "eos":
            self.streams.drop(stream)
            return []
        if msg.kind != "frame":
            m.dropped.labels("spot", "", "unexpected").inc()
            return []
        track = self.streams.get(stream, now)
        if track is None:
            _too_many("spot", stream, m, self.streams.most)
            return []
        track.counted.inc()
        f = msg.fields
        t_capture = f.get("t_capture", 0)
        # the spotter works in media time; a producer without it gets capture time
        t_media = f.get("t_media", t_capture)
        index = f.get("index", msg.seq)
        intervals = track.spots.push(msg.arrays[0], index, t_media, bool(f.get("key_frame")))
        self._watch_face(stream, track)
        if track.recent is not None:
            self._keep(track, t_media)
        out = []
        for it in intervals:
            m.spots.labels(stream).inc()
            out.append(
                Pair(
                    stream,
                    track.seq,
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
                    spot_score=float(it.score),
                    amplitude=float(it.amplitude),
                    region=it.region,
                    spot_latency_ns=int(it.latency_ns),
                    truth=msg.fields.get("truth"),
                    flow=wire_flow(it.onset_crop, it.apex_crop),
                    face=track.spots.face_box(),
                    **(self._clip(track, it.onset_ns) if track.recent is not None else {}),
                )
            )
            track.seq += 1
        for reason, n in track.spots.rejected.items():
            seen = track.rejected.get(reason, 0)
            if n > seen:
                m.spots_rejected.labels(stream, reason).inc(n - seen)
                track.rejected[reason] = n
        return out

    def _keep(self, track: _Track, t_media: int) -> None:
        """This frame's face crop (black without a face, so a clip keeps its timing), and
        only the seconds a clip can need."""
        crop = track.spots.crop
        track.recent.append((t_media, crop if crop is not None else self._blank))
        oldest = t_media - int((self.clip_s + CLIP_SPAN_S) * 1e9)
        while track.recent and track.recent[0][0] < oldest:
            track.recent.popleft()

    @functools.cached_property
    def _blank(self) -> np.ndarray:
        return np.zeros((self.size, self.size), np.uint8)

    def _clip(self, track: _Track, onset_ns: int) -> dict:
        """A pair's `clip` and `clip_fps`: the face crops from `clip_s` before the onset to
        this frame (the one that confirmed the interval: its offset or a little after;
        not `clip_s` after the offset, which would hold every event back by as long), and
        their rate in frames per second of media time."""
        start = onset_ns - int(self.clip_s * 1e9)
        kept = [(t, c) for t, c in track.recent if t >= start]
        if len(kept) < 2:
            return {}
        span_s = (kept[-1][0] - kept[0][0]) / 1e9
        fps = round((len(kept) - 1) / span_s, 2) if span_s > 0 else 0.0
        return {"clip": np.stack([c for _, c in kept]), "clip_fps": fps}

    def _watch_face(self, stream: str, track: _Track) -> None:
        """The face gauge, and one log line when a stream has shown no face for
        NO_FACE_FRAMES frames (and one when a face comes back)."""
        face = track.spots.has_face
        track.face.set(1 if face else 0)
        track.faceless = 0 if face else track.faceless + 1
        if face and track.warned:
            log.info("spot %s: a face is tracked again", stream, extra={"stream": stream})
            track.warned = False
        elif track.faceless == self.NO_FACE_FRAMES:
            log.warning(
                "spot %s: no face in the last %d frames (is the camera pointed at a face of "
                "at least 64 px?)",
                stream,
                self.NO_FACE_FRAMES,
                extra={"stream": stream},
            )
            track.warned = True


def run_spot(
    inputs: list[str],
    out: str,
    metrics: Metrics,
    stop: threading.Event,
    ctx: zmq.Context | None = None,
    params: SpotterParams | None = None,
    keys=None,
    max_streams: int = 64,
    idle_s: float = 60.0,
    clips: bool = False,
    watch: str | None = None,
    flow_device: str = "cpu",
) -> None:
    """Frames from `inputs` (connected) -> pairs to `out` (bound); with `clips`, each pair
    carries its face crops from CLIP_MARGIN_S before the onset to the confirming frame.
    With `watch` (an endpoint to bind), each stream's status and, for those watched, its
    preview go there (`mfvan.stream.watch`). `flow_device` "cuda": the spotter's flow on
    the GPU (`mfvan.kernels.flow_cuda`, the caller having checked that one is there)."""
    from .watch import WATCH_HWM, Watch

    ctx = ctx or zmq.Context.instance()
    clip_s = CLIP_MARGIN_S if clips else 0.0
    stage = SpotStage(
        metrics,
        params=params,
        max_streams=max_streams,
        idle_s=idle_s,
        clip_s=clip_s,
        flow_device=flow_device,
    )
    pull = _socket(ctx, zmq.PULL)
    push = _socket(ctx, zmq.PUSH)
    xpub = _socket(ctx, zmq.XPUB, hwm=WATCH_HWM) if watch else None
    guard = watch_guard = view = None
    try:
        _dial(pull, inputs, keys)
        guard = _serve(ctx, push, out, keys, metrics, "spot")
        if xpub is not None:
            # previews are frames: only a stage's key gets them, as only it gets frames
            watch_guard = _serve(ctx, xpub, watch, keys, metrics, "spot", role="stage")
            view = Watch(xpub)
        metrics.ready.set()
        next_expiry = time.monotonic() + 1.0
        for frames in _poll_loop(pull, stop):
            if frames is None or time.monotonic() >= next_expiry:  # idle streams go
                expired = stage.streams.expire(time.monotonic())
                if view is not None:
                    for stream in expired:
                        view.forget(stream)
                    view.poll(time.monotonic())
                next_expiry = time.monotonic() + 1.0
                if frames is None:
                    continue
            started = time.time_ns()
            msg = _decode(frames, "spot", metrics)
            if msg is None:
                continue
            try:
                pairs = stage.handle(msg)
            except Exception:  # a frame the spotter fails on costs that frame, not the stage
                metrics.dropped.labels("spot", "", "error").inc()
                _warn.warning(
                    "spot:error", "spot: failed on a frame of %.40r", msg.stream, exc_info=True
                )
                continue
            track = stage.tracks.get(msg.stream)  # None once it ended (eos)
            if track is not None and "t_ingest" in msg.fields:
                track.transit.observe((started - msg.fields["t_ingest"]) / 1e9)
            for pair in pairs:
                pair.t_spot = time.time_ns()
                # pairs are rare and precious: wait a little for a slow recognizer
                if pair.send(push, wait_ms=1000):
                    metrics.frames_out.labels("spot", pair.stream).inc()
                else:
                    metrics.dropped.labels("spot", pair.stream, "hwm").inc()
            if track is not None:
                if view is not None:  # its cost counts in the stage's own
                    view.frame(
                        msg.stream, track.spots, msg.arrays[0], msg.fields.get("t_capture", 0)
                    )
                track.seconds.observe((time.time_ns() - started) / 1e9)
    finally:
        _unguard(guard)
        _unguard(watch_guard)
        pull.close()
        push.close()
        if xpub is not None:
            xpub.close(linger=0)


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


VETO = "none"  # the class of a model that refuses what is not a micro-expression


class Classifier(NamedTuple):
    """What the recognizer classifies with: a backend (`mfvan.deploy.backends.Backend`:
    uint8 onset and apex crops (and their flow) in, class probabilities out, calibrated:
    `mfvan.deploy.backends.Calibrated`), its class names, the model version each event
    names, and the least confidence an event needs to be published (`--min-confidence`).
    A model with a `VETO` class refuses the spots it finds most likely to be that (counted
    in `mfvan_spots_vetoed_total`), unless `publish_vetoed`."""

    backend: object
    classes: list[str]
    version: str
    min_confidence: float = 0.0
    publish_vetoed: bool = False


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
    max_streams: int = 1024,
    idle_s: float = 3600.0,
) -> None:
    """Pairs from `inputs` (connected) -> events published on `out` (bound PUB); with
    `keys` (a `mfvan keys` folder) its tcp:// endpoints use CURVE: only authorized
    subscribers get events, and it connects to CURVE-guarded spot stages.

    Batching: a batch is whatever pairs are queued when the recognizer looks (at most
    `max_batch`), so under load batches fill while the previous one runs; `max_wait_s`
    (default 0: pairs are rare, each one's latency counts) makes a partial batch wait
    that long for company.

    Events go out on PUB, which never waits for a subscriber: one that falls `event_hwm`
    events behind loses the next ones (it sees the gaps in their numbering). Per stream
    the recognizer keeps only the events' numbering and metric series: at most
    `max_streams` streams, forgotten after `idle_s` without a pair."""
    ctx = ctx or zmq.Context.instance()
    batcher = Batcher(max_batch, max_wait_s)

    def new(stream: str) -> list[int]:
        metrics.init_stream(stream, classifier.classes)
        return [0]  # the stream's next event number

    streams = Streams(new, metrics.forget_stream, max_streams, idle_s)
    pull = _socket(ctx, zmq.PULL)
    pub = _socket(ctx, zmq.PUB, hwm=event_hwm)
    guard = None

    def infer(batch):
        _infer(batch, classifier, metrics, pub, streams, with_crops)

    try:
        _dial(pull, inputs, keys)
        guard = _serve(ctx, pub, out, keys, metrics, "recognize", role="subscriber")
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        metrics.ready.set()
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
                    _take(frames, batcher, metrics, streams)
            else:
                streams.expire(time.monotonic())
            metrics.queue_depth.labels("recognize").set(len(batcher.items))
            while batcher.due(time.monotonic()):
                infer(batcher.take())
    finally:
        while batcher.items:
            infer(batcher.take())
        _unguard(guard)
        pull.close()
        pub.close()


def _take(frames, batcher: Batcher, metrics: Metrics, streams: Streams) -> None:
    """One received message into the batch, or dropped and counted."""
    received = time.time_ns()
    msg = _decode(frames, "recognize", metrics)
    if msg is None:
        return
    if msg.kind != "pair":
        metrics.dropped.labels("recognize", "", "unexpected").inc()
        return
    if streams.get(msg.stream, time.monotonic()) is None:
        _too_many("recognize", msg.stream, metrics, streams.most)
        return
    metrics.frames_in.labels("recognize", msg.stream).inc()
    if "t_spot" in msg.fields:
        metrics.transit.labels("recognize", msg.stream).observe(
            (received - msg.fields["t_spot"]) / 1e9
        )
    batcher.add((msg, received), time.monotonic())


def _infer(batch, classifier: Classifier, metrics, pub, streams: Streams, with_crops) -> None:
    """Classify one batch and publish an event per pair. Crops of one size (with or without
    their flow) run together; a group the backend fails on runs again pair by pair, so one
    bad pair costs only itself (dropped and counted, `reason="error"`)."""
    sizes: dict[tuple, list] = {}
    for item in batch:  # by crop size, and with or without their flow
        arrays = item[0].arrays
        sizes.setdefault((arrays[0].shape, len(arrays)), []).append(item)
    for group in sizes.values():
        probs = _classify(group, classifier, metrics)
        if probs is not None:
            _publish(group, probs, classifier, metrics, pub, streams, with_crops)
        elif len(group) > 1:  # again pair by pair: only the pair it fails on is lost
            for item in group:
                _infer([item], classifier, metrics, pub, streams, with_crops)


def _classify(group, classifier: Classifier, metrics) -> np.ndarray | None:
    """The backend's class probabilities for a group of pairs of one crop size, or None
    (counted and logged) when it fails on them."""
    backend = classifier.backend
    try:
        onset = np.stack([m.arrays[0] for m, _ in group])
        apex = np.stack([m.arrays[1] for m, _ in group])
        # the spot stage's flow; a pair without (an older spot stage) gets it from the backend
        flow = np.stack([m.arrays[2] for m, _ in group]) if len(group[0][0].arrays) >= 3 else None
        started = time.perf_counter()
        probs = np.asarray(backend(onset, apex, flow))
        if probs.shape != (len(group), len(classifier.classes)):
            raise ValueError(f"the backend returned {probs.shape} probabilities")
    except Exception:
        if len(group) == 1:
            metrics.dropped.labels("recognize", "", "error").inc()
            _warn.warning(
                "recognize:error",
                "recognize: failed on a pair of %.40r",
                group[0][0].stream,
                exc_info=True,
            )
        return None
    metrics.inference.labels(backend.name).observe(time.perf_counter() - started)
    metrics.batch_size.observe(len(group))
    return probs


def _publish(group, probs, classifier: Classifier, metrics, pub, streams, with_crops) -> None:
    classes = classifier.classes
    for (msg, received), p in zip(group, probs, strict=True):
        best = int(np.argmax(p))
        label, confidence = classes[best], float(p[best])
        if label == VETO:
            metrics.vetoed.labels(msg.stream, VETO).inc()
            if not classifier.publish_vetoed:
                continue
        elif confidence < classifier.min_confidence:
            metrics.unsure.labels(msg.stream).inc()
            continue
        now = time.time_ns()
        fields = event_header(
            msg.fields,
            id=uuid7(now),
            label=label,
            probs=[float(x) for x in p],
            confidence=confidence,
            classes=list(classes),
            model=classifier.version,
            batch=len(group),
            t_received=received,
            t_recognize=now,
        )
        counter = streams.get(msg.stream, time.monotonic())
        if counter is None:  # forgotten while queued, and the stage is full now
            _too_many("recognize", msg.stream, metrics, streams.most)
            continue
        n = counter[0]
        counter[0] += 1
        arrays = []
        if with_crops:  # the onset and apex crops, and the clip if the pair has one
            arrays = [np.array(a) for a in msg.arrays[:2] + msg.arrays[3:]]
        protocol.send(pub, "event", msg.stream, n, arrays, **fields)
        metrics.events.labels(msg.stream, label).inc()
        metrics.frames_out.labels("recognize", msg.stream).inc()
        metrics.stage_seconds.labels("recognize", msg.stream).observe((now - received) / 1e9)
        if msg.fields.get("t_capture"):  # the capture of the frame that confirmed the apex
            metrics.end_to_end.labels("recognize", msg.stream).observe(
                (now - msg.fields["t_capture"]) / 1e9
            )
