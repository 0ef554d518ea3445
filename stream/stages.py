"""The ingest (source -> frames) and spot (frames -> pairs) stages' loops; the third,
recognize (pairs -> events), is `mfvan.stream.recognizer`, and what every stage's loop
shares (sockets, decoding and dropping, bounded per-stream state) is `sockets`. Each runs
alone in its own process (`mfvan ingest|spot|recognize`), or as a child of `mfvan run`;
each loop takes one config object (`IngestConfig`, `SpotConfig`, `RecognizeConfig`).

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
without waiting on the unbound sockets (`mfvan.deploy.runtime.stage.run_stage`). Once bound,
the stage sets `metrics.ready` (its `/ready` answers 200).

The stage logic (`SpotStage.handle`, `RecognizeStage`) is separate from the socket loops,
so tests drive it directly as well as over real sockets.

Imports nothing of model/ or deploy/.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import zmq

from mfvan.kernels.facespot import FaceSpotter
from mfvan.kernels.motion import wire_flow
from mfvan.kernels.spotter import REJECTIONS, SpotterParams

from . import protocol, sockets
from .messages import Eos, Frame, Message, Pair, typed
from .metrics import Metrics
from .sockets import Streams, log

CLIP_MARGIN_S = 0.5  # a clip starts this long before the onset (`mfvan spot --clips`)
CLIP_SPAN_S = 3.0  # and a spot stage keeps this much more of each stream's crops for it

DRAIN_S = 60.0  # how long a file's ingest waits at its end for its queued frames to go


# ----------------------------------------------------------------------------- ingest


@dataclass
class IngestConfig:
    """How an ingest stage runs: the stream's id, the endpoint it binds for its frames,
    whether the source waits for the consumer (`block`), CURVE `keys` (a `mfvan keys`
    folder) for its tcp:// endpoint."""

    stream: str
    out: str
    block: bool = False
    keys: object = None


def run_ingest(
    source,
    config: IngestConfig,
    metrics: Metrics,
    stop: threading.Event,
    ctx: zmq.Context | None = None,
) -> None:
    """Send every frame of `source` (an iterable of `messages.Frame`) to `config.out`.

    A live source never waits for the consumer: a frame that finds the queue full is
    dropped and counted. With `block` (a file played as fast as possible), the source
    waits for the consumer instead, so no frame is lost, not even the file's last ones:
    at the end the socket lingers up to `DRAIN_S` for the frames still queued (two queues
    of `sockets.HWM` frames, which a loaded spot stage serving several streams can take
    seconds to work through), where a live source's gets 2 s."""
    ctx = ctx or zmq.Context.instance()
    sock = sockets.socket(ctx, zmq.PUSH)
    guard = None
    seq = 0
    stream_id, block = config.stream, config.block
    try:
        guard = sockets.serve(ctx, sock, config.out, config.keys, metrics, "ingest")
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
            frame.stream, frame.seq, frame.t_ingest = stream_id, seq, time.time_ns()
            seq += 1
            (sent_out if frame.send(sock) else full).inc()
        Eos(stream=stream_id, seq=seq).send(sock)
    finally:
        sockets.unguard(guard)
        # zero-copy frames must go out before their arrays do: wait for them here,
        # not in the interpreter's teardown
        sock.close(linger=int(1000 * (DRAIN_S if block and not stop.is_set() else 2.0)))


# ----------------------------------------------------------------------------- spot


class ClipBuffer:
    """One stream's face crops of the last seconds, and an interval's clip from them: its
    crops from `margin_s` before the onset to the latest frame (the one that confirmed
    the interval: its offset or a little after; not `margin_s` after the offset, which
    would hold every event back by as long). The one rule for a clip's extent, live (`mfvan
    spot --clips`) and offline (`mfvan analyze --clips`)."""

    def __init__(self, size: int, margin_s: float = CLIP_MARGIN_S):
        self.margin_s = margin_s
        self.blank = np.zeros((size, size), np.uint8)
        self.recent: deque = deque(maxlen=protocol.MAX_CLIP)  # (media time, crop)

    def clear(self) -> None:
        """Forget the crops (the media time jumped: they are of another clock)."""
        self.recent.clear()

    def push(self, t_media: int, crop: np.ndarray | None) -> None:
        """A frame's face crop (black without a face, so a clip keeps its timing); only
        the seconds a clip can need are kept."""
        self.recent.append((t_media, crop if crop is not None else self.blank))
        oldest = t_media - int((self.margin_s + CLIP_SPAN_S) * 1e9)
        while self.recent and self.recent[0][0] < oldest:
            self.recent.popleft()

    def clip(self, onset_ns: int) -> tuple[np.ndarray | None, float | None]:
        """The clip of an interval with this onset, (N, S, S) uint8, and its rate in frames
        per second of media time; (None, None) for less than two frames."""
        start = onset_ns - int(self.margin_s * 1e9)
        kept = [(t, c) for t, c in self.recent if t >= start]
        if len(kept) < 2:
            return None, None
        span_s = (kept[-1][0] - kept[0][0]) / 1e9
        fps = round((len(kept) - 1) / span_s, 2) if span_s > 0 else 0.0
        return np.stack([c for _, c in kept]), fps


class StreamPairs:
    """One stream's frames -> its pairs: the spotter (`FaceSpotter`, one per face in view),
    each interval it confirms made a `Pair` (`pair_of`) of its face, numbered from 0 over
    the stream's faces, with its clip when `clip_s` keeps them (a `ClipBuffer` per face,
    dropped when the face is). What the spot stage and `mfvan analyze` share."""

    def __init__(self, spots: FaceSpotter, size: int = 128, clip_s: float = 0.0):
        self.spots = spots
        self.size, self.clip_s = size, clip_s
        self.clips: dict[int, ClipBuffer] = {}  # a face's id -> its crops' buffer
        self.seq = 0  # pairs made

    def push(self, frame: Frame) -> list[Pair]:
        """The pairs `frame` completed (a frame without an index takes its `seq`)."""
        if frame.index is None:  # a producer without indices: its numbering stands
            frame.index = frame.seq
        t_media = frame.media_ns
        intervals = self.spots.push(frame.image, frame.index, t_media, frame.key_frame)
        if self.clip_s:
            self._keep_crops(t_media)
        out = []
        for it in intervals:
            pair = pair_of(it, frame, self.spots.face_box(it.face), self.seq)
            if it.face in self.clips:
                pair.clip, pair.clip_fps = self.clips[it.face].clip(it.onset_ns)
            out.append(pair)
            self.seq += 1
        return out

    def _keep_crops(self, t_media: int) -> None:
        """Each face's crop into its clip buffer (black while the face is out of view but
        still tracked, so a clip keeps its timing); buffers of forgotten faces dropped."""
        tracked = self.spots.tracked()
        for face in [f for f in self.clips if f not in tracked]:
            del self.clips[face]
        for face in tracked:
            clips = self.clips.get(face)
            if clips is None:
                clips = self.clips[face] = ClipBuffer(self.size, self.clip_s)
            if self.spots.jumped:
                clips.clear()
            clips.push(t_media, self.spots.crops.get(face))


@dataclass
class _Track:
    pairs: StreamPairs
    counted: object  # the stream's frames_in, faces and latency series, bound once
    face: object  # (`labels()` costs 2 us a call)
    transit: object
    seconds: object
    rejected: dict = field(default_factory=dict)
    faceless: int = 0  # frames in a row without a face
    warned: bool = False  # that the stream shows no face

    @property
    def spots(self) -> FaceSpotter:
        return self.pairs.spots


def pair_of(it, frame: Frame, face: list | None, seq: int) -> Pair:
    """The pair of a spotted interval (`kernels.spotter.Interval`), confirmed at `frame`:
    its crops and their flow (`wire_flow`), its moments in media time and on the capture
    clock (for latency), the spotter's measurements, the face square. A moment before the
    epoch on the capture clock (a producer that sent no capture time: 0) is the epoch."""
    t_capture, t_media = frame.t_capture, frame.media_ns

    def clock(t_ns: int) -> int:
        return max(0, t_capture - (t_media - t_ns))

    return Pair(
        stream=frame.stream,
        seq=seq,
        onset_crop=it.onset_crop,
        apex_crop=it.apex_crop,
        flow=wire_flow(it.onset_crop, it.apex_crop),
        onset=it.onset,
        apex=it.apex,
        offset=it.offset,
        media_onset=it.onset_ns,
        media_apex=it.apex_ns,
        media_offset=it.offset_ns,
        t_onset=clock(it.onset_ns),
        t_apex=clock(it.apex_ns),
        t_offset=clock(it.offset_ns),
        t_capture=t_capture,
        t_ingest=frame.t_ingest or 0,
        spot_score=float(it.score),
        amplitude=float(it.amplitude),
        region=it.region,
        spot_latency_ns=int(it.latency_ns),
        truth=frame.truth,
        face=face,
        face_id=it.face,
    )


class SpotStage:
    """Per stream: track the face, crop, spot. `handle(message)` returns the pairs that
    frame completed. At most `max_streams` streams at once; a stream idle for `idle_s` or
    ended (`eos`) is forgotten (`Streams`)."""

    NO_FACE_FRAMES = 500  # frames without a face before the stage says so in the log
    size = 128  # px, the side of a face's crop (what the model was trained on)

    def __init__(
        self,
        metrics: Metrics,
        params: SpotterParams | None = None,
        max_streams: int = 64,
        idle_s: float = 60.0,
        clip_s: float = 0.0,
        flow_device: str = "cpu",
        max_faces: int = 4,
    ):
        self.metrics = metrics
        self.params = params
        self.clip_s = clip_s
        self.max_faces = max_faces
        self.flow_fn = None  # the spotter's own CPU kernel
        if flow_device == "cuda":  # the same method on the GPU (mfvan.kernels.flow_cuda)
            from mfvan.kernels import flow_cuda
            from mfvan.kernels.spotter import SpotterParams

            self.flow_fn = flow_cuda.flow_fn((params or SpotterParams()).flow)
        self.streams = Streams(self._new, metrics.forget_stream, max_streams, idle_s)

    def _new(self, stream: str) -> _Track:
        m = self.metrics
        m.init_stream(stream, rejections=REJECTIONS)
        spots = FaceSpotter(
            self.params,
            self.size,
            background=True,
            flow_fn=self.flow_fn,
            max_faces=self.max_faces,
        )
        return _Track(
            StreamPairs(spots, self.size, self.clip_s),
            m.frames_in.labels("spot", stream),
            m.faces.labels(stream),
            m.transit.labels("spot", stream),
            m.stage_seconds.labels("spot", stream),
        )

    @property
    def tracks(self) -> dict[str, _Track]:
        return self.streams.state

    def handle(self, msg: Message | protocol.Message, now: float | None = None) -> list[Pair]:
        """The pairs a message completed: a frame's, none for the others (an eos ends
        its stream)."""
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
            sockets.too_many("spot", stream, m, self.streams.most)
            return []
        track.counted.inc()
        frame = msg if isinstance(msg, Frame) else Frame.from_message(msg)
        out = track.pairs.push(frame)
        if track.spots.jumped:
            m.clock_jumps.labels(stream).inc()
            sockets.warn.warning(
                f"spot:clock:{stream}",
                "spot %s: its media time jumped (a camera that restarted, or recordings "
                "joined): tracking and spotting start again",
                stream,
            )
        self._watch_face(stream, track)
        if out:
            m.spots.labels(stream).inc(len(out))
        for reason, n in track.spots.rejected.items():
            seen = track.rejected.get(reason, 0)
            if n > seen:
                m.spots_rejected.labels(stream, reason).inc(n - seen)
                track.rejected[reason] = n
        return out

    def _watch_face(self, stream: str, track: _Track) -> None:
        """The face gauge, and one log line when a stream has shown no face for
        NO_FACE_FRAMES frames (and one when a face comes back)."""
        face = track.spots.has_face
        track.face.set(len(track.spots.crops))
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


@dataclass
class SpotConfig:
    """How a spot stage runs (`mfvan spot`'s options): frames from `inputs` (connected),
    pairs to `out` (bound); `params` the spotter's; CURVE `keys`; at most `max_streams`
    streams, each forgotten after `idle_s` without a frame; with `clips`, each pair carries
    its face crops from CLIP_MARGIN_S before the onset to the confirming frame; with
    `watch` (an endpoint to bind), each stream's status and, for those watched, its preview
    go there (`mfvan.stream.watch`); `flow_device` "cuda": the spotter's flow on the GPU
    (`mfvan.kernels.flow_cuda`, the caller having checked that one is there)."""

    inputs: list[str]
    out: str
    params: SpotterParams | None = None
    keys: object = None
    max_streams: int = 64
    idle_s: float = 60.0
    clips: bool = False
    watch: str | None = None
    flow_device: str = "cpu"
    max_faces: int = 4

    def stage(self, metrics: Metrics) -> SpotStage:
        return SpotStage(
            metrics,
            params=self.params,
            max_streams=self.max_streams,
            idle_s=self.idle_s,
            clip_s=CLIP_MARGIN_S if self.clips else 0.0,
            flow_device=self.flow_device,
            max_faces=self.max_faces,
        )


def run_spot(
    config: SpotConfig,
    metrics: Metrics,
    stop: threading.Event,
    ctx: zmq.Context | None = None,
) -> None:
    """Frames -> pairs until `stop` is set (`SpotConfig` says from and to where)."""
    from .watch import WATCH_HWM, Watch

    ctx = ctx or zmq.Context.instance()
    stage = config.stage(metrics)
    pull = sockets.socket(ctx, zmq.PULL)
    push = sockets.socket(ctx, zmq.PUSH)
    xpub = sockets.socket(ctx, zmq.XPUB, hwm=WATCH_HWM) if config.watch else None
    guard = watch_guard = view = None
    try:
        sockets.dial(pull, config.inputs, config.keys)
        guard = sockets.serve(ctx, push, config.out, config.keys, metrics, "spot")
        if xpub is not None:
            # previews are frames: only a stage's key gets them, as only it gets frames
            watch_guard = sockets.serve(ctx, xpub, config.watch, config.keys, metrics, "spot")
            view = Watch(xpub)
        metrics.ready.set()
        next_expiry = time.monotonic() + 1.0
        for frames in sockets.poll_loop(pull, stop):
            if frames is None or time.monotonic() >= next_expiry:  # idle streams go
                _expire(stage, view)
                next_expiry = time.monotonic() + 1.0
            if frames is not None:
                _spot_message(frames, stage, push, view, metrics)
    finally:
        sockets.unguard(guard)
        sockets.unguard(watch_guard)
        pull.close()
        push.close()
        if xpub is not None:
            xpub.close(linger=0)


def _expire(stage: SpotStage, view) -> None:
    """Forget the idle streams (and their watch), and let the watch send its statuses."""
    expired = stage.streams.expire(time.monotonic())
    if view is not None:
        for stream in expired:
            view.forget(stream)
        view.poll(time.monotonic())


def _spot_message(frames, stage: SpotStage, push, view, metrics: Metrics) -> None:
    """One received message through the spot stage; its pairs sent (each waits up to a
    second for a slow recognizer: pairs are rare and precious)."""
    started = time.time_ns()
    msg = sockets.decode(frames, "spot", metrics)
    if msg is None:
        return
    try:
        frame = typed(msg)
        pairs = stage.handle(frame)
    except Exception:  # a frame the spotter fails on costs that frame, not the stage
        metrics.dropped.labels("spot", "", "error").inc()
        sockets.warn.warning(
            "spot:error", "spot: failed on a frame of %.40r", msg.stream, exc_info=True
        )
        return
    if not isinstance(frame, Frame):
        return
    track = stage.tracks.get(msg.stream)  # None once it ended (eos)
    if track is not None and frame.t_ingest is not None:
        track.transit.observe((started - frame.t_ingest) / 1e9)
    for pair in pairs:
        pair.t_spot = time.time_ns()
        if pair.send(push, wait_ms=1000):
            metrics.frames_out.labels("spot", pair.stream).inc()
        else:
            metrics.dropped.labels("spot", pair.stream, "hwm").inc()
    if track is not None:
        if view is not None:  # its cost counts in the stage's own
            view.frame(msg.stream, track.spots, frame.image, frame.t_capture)
        track.seconds.observe((time.time_ns() - started) / 1e9)
