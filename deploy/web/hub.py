"""The web view's state: what it hears from the pipeline, kept for the pages.

A `Hub` is a subscriber like any other: it takes the recognizer's events (a
`mfvan.stream.Subscription` in a thread of its own) and the spot stages' watch sockets
(`mfvan.stream.watch`: statuses always, a camera's previews only while a browser shows
it), and reads the run's /metrics every METRICS_S while a page is open. Everything it
keeps is bounded: per camera the last SIGNAL_S of the spotter's signal and one JPEG; the
last RECENT events (with their images when the view shows faces); per browser a queue of
CLIENT_QUEUE messages. A browser that reads too slowly loses messages (counted), never
the hub's or the pipeline's time: the pipeline's sockets never wait for a subscriber.

Imports nothing of model/.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import zmq
import zmq.asyncio

from mfvan.stream import protocol, security
from mfvan.stream.messages import Preview, Status
from mfvan.stream.metrics import fetch
from mfvan.stream.outputs.store import SNAPSHOTS, snapshot_images

log = logging.getLogger("mfvan.web")
SIGNAL_S = 10.0  # seconds of the spotter's signal a tile draws
SIGNAL_BINS = 200  # points of its sparkline (the highest sample of each bin)
RECENT = 50  # live events kept (with their images)
CLIENT_QUEUE = 256  # messages a browser may fall behind before it loses some
METRICS_S = 5.0  # how often the run's /metrics is read while a page is open
STALE_S = 2.0  # a camera with no status for this long is not "tracking" any more
JPEG_QUALITY = 75
IMAGES = SNAPSHOTS  # an event's images (the store's snapshots), in the order shown


@dataclass
class Camera:
    """One camera as the view knows it."""

    name: str
    status: Status | None = None
    status_at: float = 0.0  # monotonic
    signal: deque = field(default_factory=lambda: deque(maxlen=8192))  # (t_s, value|None)
    jpeg: bytes | None = None
    frame_no: int = 0  # previews received
    new_frame: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: int = 0  # browsers showing its preview
    fps: float | None = None  # from the stage metrics
    p99_ms: float | None = None
    reconnecting: bool = False

    def state(self, now: float) -> str:
        if self.status is not None and now - self.status_at < STALE_S:
            return self.status.state
        return "reconnecting" if self.reconnecting else "no frames"

    def sparkline(self, now_s: float) -> list[float | None]:
        """The signal of the last SIGNAL_S in SIGNAL_BINS bins (None: not measured)."""
        bins: list[float | None] = [None] * SIGNAL_BINS
        start = now_s - SIGNAL_S
        for t, value in self.signal:
            if value is None or t < start:
                continue
            i = min(SIGNAL_BINS - 1, int((t - start) / SIGNAL_S * SIGNAL_BINS))
            if bins[i] is None or value > bins[i]:
                bins[i] = value
        return bins

    def summary(self, now: float) -> dict:
        s = self.status
        return {
            "name": self.name,
            "state": self.state(now),
            "face": s and s.face,
            "faces": s.faces if s else [],
            "width": s and s.width,
            "height": s and s.height,
            "threshold": s and s.threshold,
            "signal": self.sparkline(time.time()),
            "signal_s": SIGNAL_S,
            "fps": self.fps if self.fps is not None else s and s.fps,
            "p99_ms": self.p99_ms,
            "previews": self.frame_no,
        }


class Client:
    """One browser's live feed (Server-Sent Events): a bounded queue."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue(CLIENT_QUEUE)
        self.lost = 0

    def put(self, kind: str, data: dict) -> None:
        try:
            self.queue.put_nowait((kind, data))
        except asyncio.QueueFull:
            self.lost += 1


class Hub:
    """`events`: the recognizer's endpoint; `watch`: the spot stages' watch endpoints;
    `db`: the event store (history, and snapshots of events that came without crops);
    `metrics_url`: the run's /metrics; `faces`: whether previews and face images are shown
    at all; `cameras`: names to show before they send anything; `keys`: a CURVE keys
    folder (`mfvan keys`): the subscriber's key for a tcp:// event endpoint, the stage's for
    tcp:// watch endpoints (previews are frames: a subscriber's key does not get them).
    Sockets are made and connected here, so a bad endpoint or key is known at once."""

    def __init__(
        self,
        events: str | None = None,
        watch: list[str] = (),
        db: Path | None = None,
        metrics_url: str | None = None,
        faces: bool = False,
        cameras: list[str] = (),
        keys: Path | None = None,
    ):
        self.events_endpoint, self.watch_endpoints = events, list(watch)
        self.db, self.metrics_url, self.faces = db, metrics_url, faces
        self.curve = security.client_curve(keys, "subscriber") if keys and events else None
        self.cameras: dict[str, Camera] = {}
        for name in cameras:
            self.camera(name)
        self.recent: deque = deque(maxlen=RECENT)  # event dicts, newest last
        self.images: OrderedDict[str, dict[str, bytes]] = OrderedDict()  # id -> name -> PNG
        self.clients: set[Client] = set()
        self.closing = False  # the server is stopping: every feed ends
        # dropped: watch messages the view could not use; malformed: events decode refused
        self.counts = {"events": 0, "statuses": 0, "previews": 0, "dropped": 0, "malformed": 0}
        self._stop = threading.Event()
        self._tasks: list[asyncio.Task] = []
        self._thread: threading.Thread | None = None
        self._ctx = zmq.asyncio.Context()
        self._watch: zmq.asyncio.Socket | None = None
        if self.watch_endpoints:
            self._watch = self._ctx.socket(zmq.SUB)
            self._watch.setsockopt(zmq.LINGER, 0)
            self._watch.setsockopt(zmq.RCVHWM, 64)
            self._watch.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE)
            security.secure_client(self._watch, self.watch_endpoints, keys, role="stage")
            self._watch.setsockopt(zmq.SUBSCRIBE, b"status:")
            for endpoint in self.watch_endpoints:
                security.connect(self._watch, endpoint)
        self._metrics_before: dict | None = None

    def camera(self, name: str) -> Camera:
        cam = self.cameras.get(name)
        if cam is None:
            cam = self.cameras[name] = Camera(name)
        return cam

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._watch is not None:
            self._tasks.append(asyncio.create_task(self._watch_loop()))
        if self.events_endpoint:
            self._thread = threading.Thread(
                target=self._events_thread, args=(loop,), name="events", daemon=True
            )
            self._thread.start()
        if self.metrics_url:
            self._tasks.append(asyncio.create_task(self._metrics_loop()))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
        if self._watch is not None:
            self._watch.close(linger=0)
        self._ctx.term()

    # ------------------------------------------------------------------ previews

    def watch(self, name: str) -> Camera | None:
        """A browser starts showing `name`'s preview: the first asks the spot stage for it.
        None for a camera the view does not know (a made-up name costs nothing)."""
        cam = self.cameras.get(name)
        if cam is None:
            return None
        cam.watchers += 1
        if cam.watchers == 1 and self._watch is not None:
            self._watch.setsockopt(zmq.SUBSCRIBE, protocol.topic(name, "preview"))
        return cam

    def unwatch(self, cam: Camera) -> None:
        cam.watchers -= 1
        if cam.watchers == 0 and self._watch is not None:
            self._watch.setsockopt(zmq.UNSUBSCRIBE, protocol.topic(cam.name, "preview"))

    async def _watch_loop(self) -> None:
        while True:
            parts = await self._watch.recv_multipart(copy=True)
            try:
                msg = protocol.decode(parts)
            except protocol.Malformed as e:
                self.counts["dropped"] += 1
                log.debug("web: dropped a watch message: %s", e)
                continue
            if msg.kind == "status":
                self._on_status(Status.from_message(msg))
            elif msg.kind == "preview" and self.faces:
                self._on_preview(Preview.from_message(msg))

    def _on_status(self, status: Status) -> None:
        self.counts["statuses"] += 1
        cam = self.camera(status.stream)
        cam.status, cam.status_at = status, time.monotonic()
        samples = status.signal
        end = status.t_status / 1e9
        step = 1 / max(1.0, status.fps or 1.0)
        for i, value in enumerate(samples):  # spread over the status's span, in order
            cam.signal.append((end - (len(samples) - 1 - i) * step, value))
        if self.clients:
            self.broadcast("status", cam.summary(time.monotonic()))

    def _on_preview(self, preview: Preview) -> None:
        self.counts["previews"] += 1
        cam = self.camera(preview.stream)
        image = np.asarray(preview.image)
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)
        # every face in view with its id (an older spot stage sends only the first face)
        faces = preview.faces or ([[0, *preview.face]] if preview.face is not None else [])
        for face_id, *box in faces:
            x, y, w, h = (int(round(v)) for v in box)
            cv2.rectangle(image, (x, y), (x + w, y + h), (80, 220, 80), 2)
            if face_id:
                cv2.putText(
                    image,
                    str(face_id),
                    (x + 3, y + 16),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.5,
                    (80, 220, 80),
                    1,
                    cv2.LINE_AA,
                )
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if ok:
            cam.jpeg, cam.frame_no = jpeg.tobytes(), cam.frame_no + 1
            cam.new_frame.set()
            cam.new_frame = asyncio.Event()  # the next frame's waiters wait on a new one

    # ------------------------------------------------------------------ events

    def _events_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        from mfvan.stream import subscribe
        from mfvan.stream.client import Refused

        try:
            with subscribe(self.events_endpoint, timeout_s=0.2, curve=self.curve) as sub:
                while not self._stop.is_set():
                    for event in sub:
                        record = self._record(event)
                        loop.call_soon_threadsafe(self._on_event, record)
                        self.counts["malformed"] = sub.dropped  # refused by decode: counted
                        if self._stop.is_set():
                            break
                    self.counts["malformed"] = sub.dropped
        except Refused as e:
            log.error("web: %s", e)
        except RuntimeError:  # the loop closed under it: the view is stopping
            pass

    def _record(self, event) -> tuple[dict, dict[str, bytes]]:
        """An event as the pages show it, and its images (PNG) when it carries crops."""
        data = event.as_dict()
        t = event.times
        if t.get("t_recognize") and t.get("t_apex"):
            data["apex_to_event_ms"] = round((t["t_recognize"] - t["t_apex"]) / 1e6, 1)
        data["received_time"] = time.time()
        images = {}
        if self.faces and len(event.crops) == 2:
            for name, image in snapshot_images(*event.crops):
                ok, png = cv2.imencode(".png", image)
                if ok:
                    images[name] = png.tobytes()
        return data, images

    def _on_event(self, record: tuple[dict, dict[str, bytes]]) -> None:
        data, images = record
        self.counts["events"] += 1
        if images:
            self.images[data["id"]] = images
            while len(self.images) > RECENT:
                self.images.popitem(last=False)
        # an event without crops has no images anywhere: the recorder got none either
        data["images"] = [n for n in IMAGES if n in images]
        self.recent.append(data)
        self.broadcast("event", data)

    # ------------------------------------------------------------------ browsers

    def broadcast(self, kind: str, data: dict) -> None:
        for client in self.clients:
            client.put(kind, data)

    def close_feeds(self) -> None:
        """End every live feed and preview now (the server is stopping), so that none is
        cancelled mid-send (`Cancel N running task(s)` and their tracebacks)."""
        self.closing = True
        for client in list(self.clients):
            while not client.queue.empty():  # what it had not sent yet is moot
                client.queue.get_nowait()
            client.queue.put_nowait(("bye", {}))
        for cam in self.cameras.values():
            cam.new_frame.set()

    def image(self, event_id: str, name: str) -> bytes | None:
        """An event's image (onset, apex, difference) as PNG, from the live events or,
        for older ones, the event store's snapshots."""
        live = self.images.get(event_id, {}).get(name)
        if live is not None or self.db is None:
            return live
        path = self.stored_file(event_id, f"{name}.png")
        return path.read_bytes() if path is not None else None

    def stored_file(self, event_id: str, name: str) -> Path | None:
        """A snapshot file of an event in the store (onset.png, apex.png, difference.png,
        clip.mp4), or None: only a regular file inside the store's media folder, never
        through a symbolic link (one planted there would serve any file the view can read)."""
        event = self.stored_event(event_id)
        if event is None:
            return None
        media = Path(str(self.db) + ".media")  # as the store names it
        for path in map(Path, event.get("snapshots", [])):
            if path.name != name or not path.is_relative_to(media):
                continue
            steps = [media.joinpath(*path.relative_to(media).parts[: i + 1]) for i in range(3)]
            if path.is_file() and not any(step.is_symlink() for step in steps):
                return path
        return None

    def stored_event(self, event_id: str) -> dict | None:
        from mfvan.stream.outputs.store import EventStore, StoreError

        if self.db is None:
            return None
        try:
            with EventStore(self.db, readonly=True) as store:
                event = store.get(event_id)
        except StoreError:
            return None
        return event if event is not None and event["id"] == event_id else None

    # ------------------------------------------------------------------ metrics

    async def _metrics_loop(self) -> None:
        while True:
            if self.clients:
                text = await asyncio.to_thread(fetch, self.metrics_url, 3)
                if text is not None:
                    try:
                        self._on_metrics(text, time.monotonic())
                    except ValueError as e:
                        log.debug("web: /metrics not read: %s", e)
            await asyncio.sleep(METRICS_S)

    def _on_metrics(self, text: str, now: float) -> None:
        """Each camera's spot frame rate, the p99 of its frames' time in the spot stage
        (queue and work) since the last reading, and whether its source is reconnecting."""
        totals = parse_metrics(text)
        before, self._metrics_before = self._metrics_before, (now, totals)
        if before is None:
            return
        dt = now - before[0]
        old = before[1]
        for stream, now_t in totals.items():
            if stream not in self.cameras and not now_t["frames"]:
                continue
            cam = self.camera(stream)
            was = old.get(stream)
            if was is None or dt <= 0:
                continue
            cam.fps = round((now_t["frames"] - was["frames"]) / dt, 1)
            cam.reconnecting = now_t["attempts"] > was["attempts"]
            p99 = quantile(
                {le: n - was["buckets"].get(le, 0) for le, n in now_t["buckets"].items()}, 0.99
            )
            cam.p99_ms = None if p99 is None else round(p99 * 1000, 1)


def parse_metrics(text: str) -> dict[str, dict]:
    """Per stream, from Prometheus text (one stage's or the run's aggregate, summed over
    processes): spot frames in, reconnect attempts, and the spot stage's seconds-per-frame
    histogram buckets (`le` -> cumulative count)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict] = {}

    def of(stream: str) -> dict:
        return out.setdefault(stream, {"frames": 0.0, "attempts": 0.0, "buckets": {}})

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            stream = s.labels.get("stream")
            if not stream:
                continue
            if s.name == "mfvan_frames_in_total" and s.labels.get("stage") == "spot":
                of(stream)["frames"] += s.value
            elif s.name == "mfvan_reconnect_attempts_total":
                of(stream)["attempts"] += s.value
            elif s.name == "mfvan_stage_seconds_bucket" and s.labels.get("stage") == "spot":
                le = float(s.labels["le"])
                buckets = of(stream)["buckets"]
                buckets[le] = buckets.get(le, 0.0) + s.value
    return out


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram (`le` -> count), interpolated within its
    bucket as Prometheus' histogram_quantile does; None without observations."""
    if not buckets:
        return None
    edges = sorted(buckets)
    total = buckets[edges[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in edges:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, count
    return lower


def finite(value):
    """`value` with every float that is not finite as None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def sse(kind: str, data: dict) -> bytes:
    """One Server-Sent Event."""
    return f"event: {kind}\ndata: {json.dumps(finite(data))}\n\n".encode()
