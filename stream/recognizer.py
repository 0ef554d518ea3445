"""The recognizer: pairs in, events out. `Classifier` is the one recognizer of mfvan,
live and offline: the recognize stage (`RecognizeStage`, `run_recognize`), `mfvan
analyze` and `mfvan spot-eval` all classify with it, and decide what to publish with the
same rule (`kernels.decide.decide`: the most probable class; a `VETO` class refuses, a
confidence under `min_confidence` holds back).

Batching: a batch is whatever pairs are queued when the recognizer looks (at most
`max_batch`), so under load batches fill while the previous one runs; `max_wait_s`
(default 0: pairs are rare, each one's latency counts) makes a partial batch wait that
long for company. Crops of one size (with or without their flow) run together; a group
the backend fails on runs again pair by pair, so one bad pair costs only itself (dropped
and counted, `reason="error"`).

Events go out on PUB, which never waits for a subscriber: one that falls `event_hwm`
events behind loses the next ones (it sees the gaps in their numbering). Per stream the
recognizer keeps only the events' numbering and metric series: at most `max_streams`
streams, forgotten after `idle_s` without a pair.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import zmq

from mfvan.kernels.decide import VETO, decide

from . import protocol, sockets
from .messages import Event, Pair, uuid7
from .metrics import Metrics
from .sockets import Streams

__all__ = ["VETO", "Backend", "Batcher", "Classifier", "RecognizeConfig", "RecognizeStage"]


class Backend(Protocol):
    """What the recognizer calls (`mfvan.deploy.inference.backends` has one per runtime): uint8
    (onset, apex) crops, (B, H, W) or (B, H, W, 3), and optionally their flow (B, H, W, 2),
    in; class probabilities, (B, classes) float32, out."""

    name: str  # what runs, as logged and labelled ("onnxruntime (CPUExecutionProvider)")

    def __call__(
        self, onset: np.ndarray, apex: np.ndarray, flow: np.ndarray | None = None
    ) -> np.ndarray: ...


@dataclass
class Classifier:
    """What the recognizer classifies with: a backend (calibrated:
    `mfvan.deploy.inference.backends.Calibrated`), its class names, the model version each event
    names, the least confidence an event needs (`--min-confidence`). A model with a
    `VETO` class refuses the spots it finds most likely to be that (counted in
    `mfvan_spots_vetoed_total`), unless `publish_vetoed`."""

    backend: Backend
    classes: list[str]
    version: str
    min_confidence: float = 0.0
    publish_vetoed: bool = False

    def probabilities(self, pairs: list[Pair]) -> np.ndarray:
        """The class probabilities of pairs of one crop size, (len(pairs), classes); a
        pair without its flow (an older spot stage's) gets it from the backend."""
        onset = np.stack([p.onset_crop for p in pairs])
        apex = np.stack([p.apex_crop for p in pairs])
        flow = np.stack([p.flow for p in pairs]) if pairs[0].flow is not None else None
        probs = np.asarray(self.backend(onset, apex, flow))
        if probs.shape != (len(pairs), len(self.classes)):
            raise ValueError(f"the backend returned {probs.shape} probabilities")
        return probs

    def event(self, pair: Pair, probs: np.ndarray, batch: int, t_received: int):
        """The event of `pair` with these probabilities, or why none is published
        ("vetoed", "unsure")."""
        label, confidence, refused = decide(
            probs, self.classes, self.min_confidence, self.publish_vetoed
        )
        if refused:
            return refused
        now = time.time_ns()
        return Event.of(
            pair,
            id=uuid7(now),
            label=label,
            probs={c: float(x) for c, x in zip(self.classes, probs, strict=True)},
            confidence=confidence,
            model=self.version,
            batch=batch,
            t_received=t_received,
            t_recognize=now,
        )

    def recognize(self, pairs: list[Pair], t_received: int = 0) -> list[Event | str]:
        """Each pair's event, or why it has none: one backend call (pairs of one size)."""
        probs = self.probabilities(pairs)
        return [self.event(p, x, len(pairs), t_received) for p, x in zip(pairs, probs, strict=True)]


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


@dataclass
class RecognizeConfig:
    """How a recognize stage runs (`mfvan recognize`'s options): pairs from `inputs`
    (connected), events on `out` (bound PUB); with `keys` (a `mfvan keys` folder) its
    tcp:// endpoints use CURVE (only authorized subscribers get events)."""

    inputs: list[str]
    out: str
    max_batch: int = 8
    max_wait_s: float = 0.0
    with_crops: bool = False  # events carry the crops (and the clip, when the pair has one)
    keys: object = None
    event_hwm: int = 1000
    max_streams: int = 1024
    idle_s: float = 3600.0


class RecognizeStage:
    """Batches of pairs -> published events, each stream's events numbered from 0. The
    logic of `run_recognize`, apart from its sockets: `take` a received message, `infer`
    a batch (`publish` gets each event)."""

    def __init__(self, classifier: Classifier, metrics: Metrics, config: RecognizeConfig):
        self.classifier, self.metrics, self.config = classifier, metrics, config
        self.batcher = Batcher(config.max_batch, config.max_wait_s)
        self.streams = Streams(self._new, metrics.forget_stream, config.max_streams, config.idle_s)
        self.publish = lambda event: None  # set by `run_recognize`: the PUB socket's send

    def _new(self, stream: str) -> list[int]:
        self.metrics.init_stream(stream, self.classifier.classes)
        return [0]  # the stream's next event number

    def take(self, frames) -> None:
        """One received message into the batch, or dropped and counted."""
        received, m = time.time_ns(), self.metrics
        msg = sockets.decode(frames, "recognize", m)
        if msg is None:
            return
        if msg.kind != "pair":
            m.dropped.labels("recognize", "", "unexpected").inc()
            return
        if self.streams.get(msg.stream, time.monotonic()) is None:
            sockets.too_many("recognize", msg.stream, m, self.streams.most)
            return
        pair = Pair.from_message(msg)
        m.frames_in.labels("recognize", pair.stream).inc()
        if pair.t_spot is not None:
            m.transit.labels("recognize", pair.stream).observe((received - pair.t_spot) / 1e9)
        self.batcher.add((pair, received), time.monotonic())

    def infer(self, batch: list[tuple[Pair, int]]) -> None:
        """Classify one batch and publish its events (see the module's docstring)."""
        groups: dict[tuple, list] = {}
        for item in batch:  # by crop size, and with or without their flow
            pair = item[0]
            groups.setdefault((pair.onset_crop.shape, pair.flow is None), []).append(item)
        for group in groups.values():
            probs = self._probabilities(group)
            if probs is not None:
                for (pair, received), p in zip(group, probs, strict=True):
                    self._publish(pair, self.classifier.event(pair, p, len(group), received))
            elif len(group) > 1:  # again pair by pair: only the pair it fails on is lost
                for item in group:
                    self.infer([item])

    def _probabilities(self, group) -> np.ndarray | None:
        """The backend's probabilities for a group, or None (counted and logged) when it
        fails on them."""
        started = time.perf_counter()
        try:
            probs = self.classifier.probabilities([pair for pair, _ in group])
        except Exception:
            if len(group) == 1:
                self.metrics.dropped.labels("recognize", "", "error").inc()
                sockets.warn.warning(
                    "recognize:error",
                    "recognize: failed on a pair of %.40r",
                    group[0][0].stream,
                    exc_info=True,
                )
            return None
        self.metrics.inference.labels(self.classifier.backend.name).observe(
            time.perf_counter() - started
        )
        self.metrics.batch_size.observe(len(group))
        return probs

    def _publish(self, pair: Pair, event: Event | str) -> None:
        m, stream = self.metrics, pair.stream
        if event == "vetoed":
            m.vetoed.labels(stream, VETO).inc()
            return
        if event == "unsure":
            m.unsure.labels(stream).inc()
            return
        if event.label == VETO:  # published all the same (`publish_vetoed`)
            m.vetoed.labels(stream, VETO).inc()
        counter = self.streams.get(stream, time.monotonic())
        if counter is None:  # forgotten while queued, and the stage is full now
            sockets.too_many("recognize", stream, m, self.streams.most)
            return
        event.seq, counter[0] = counter[0], counter[0] + 1
        if self.config.with_crops:  # the onset and apex crops, and the clip if it has one
            event.onset_crop, event.apex_crop = pair.onset_crop, pair.apex_crop
            event.clip = pair.clip
        self.publish(event)
        m.events.labels(stream, event.label).inc()
        m.frames_out.labels("recognize", stream).inc()
        m.stage_seconds.labels("recognize", stream).observe(
            (event.t_recognize - event.t_received) / 1e9
        )
        if pair.t_capture:  # the capture of the frame that confirmed the apex
            m.end_to_end.labels("recognize", stream).observe(
                (event.t_recognize - pair.t_capture) / 1e9
            )


def run_recognize(
    config: RecognizeConfig,
    classifier: Classifier,
    metrics: Metrics,
    stop: threading.Event,
    ctx: zmq.Context | None = None,
) -> None:
    """Pairs from `config.inputs` -> events published on `config.out` until `stop` is
    set (see the module's docstring)."""
    ctx = ctx or zmq.Context.instance()
    stage = RecognizeStage(classifier, metrics, config)
    batcher = stage.batcher
    pull = sockets.socket(ctx, zmq.PULL)
    pub = sockets.socket(ctx, zmq.PUB, hwm=config.event_hwm)
    stage.publish = lambda event: event.send(pub)
    guard = None
    try:
        sockets.dial(pull, config.inputs, config.keys)
        guard = sockets.serve(
            ctx, pub, config.out, config.keys, metrics, "recognize", role="subscriber"
        )
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
                        stage.take(protocol.recv_parts(pull, zmq.NOBLOCK))
                    except zmq.Again:
                        break
            else:
                stage.streams.expire(time.monotonic())
            metrics.queue_depth.labels("recognize").set(len(batcher.items))
            while batcher.due(time.monotonic()):
                stage.infer(batcher.take())
    finally:
        while batcher.items:
            stage.infer(batcher.take())
        sockets.unguard(guard)
        pull.close()
        pub.close()
