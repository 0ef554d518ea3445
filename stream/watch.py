"""What a spot stage shows of its streams to whoever watches (the web view, `mfvan web`):
per stream, a `status` a few times a second (tracking or not, the face square, the
spotter's signal since the last status and its start threshold, the frame rate) and, only
for a camera someone is watching, a `preview`: the frame downscaled (its longer side at
most PREVIEW_SIDE px), at most PREVIEW_FPS a second.

The socket is an XPUB: ZeroMQ hands it each subscription a subscriber makes or drops
(`\\x01status:cam1\\0`, `\\x00preview:cam1\\0`; the first for a topic and the last, however
many subscribers share it), so the stage knows what is asked for and produces nothing
else: with nobody subscribed, a frame costs one attribute test. Sends never wait (a slow
watcher loses previews, never the stage's time); the subscriptions are read at most every
POLL_S, not at every frame.

Imports nothing of model/ or deploy/.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import zmq

from . import protocol
from .messages import Preview, Status

STATUS_HZ = 4.0  # statuses per stream per second
PREVIEW_FPS = 5.0  # previews per watched stream per second, at most
PREVIEW_SIDE = 320  # px, a preview's longer side at most
POLL_S = 0.1  # how often the subscriptions are read
WATCH_HWM = 16  # messages queued per watcher: a second of previews of three cameras


class _Stream:
    """What one stream's next status gathers."""

    def __init__(self):
        self.signal: list[float | None] = []
        self.frames = 0
        self.since = time.monotonic()
        self.next_preview = 0.0
        self.seq = 0  # statuses sent
        self.previews = 0


class Watch:
    """The watch side of a spot stage: `sock`, an XPUB socket it has bound; call
    `frame(...)` after each frame the stage handled."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self.subscriptions: set[bytes] = set()
        self.streams: dict[str, _Stream] = {}
        self._wanted: dict[bytes, bool] = {}
        self.next_poll = 0.0

    @property
    def active(self) -> bool:
        """Anyone subscribed to anything."""
        return bool(self.subscriptions)

    def wanted(self, kind: str, stream: str) -> bool:
        """Whether some subscription covers this kind of this stream."""
        t = protocol.topic(stream, kind)
        hit = self._wanted.get(t)
        if hit is None:
            hit = self._wanted[t] = any(t.startswith(s) for s in self.subscriptions)
        return hit

    def poll(self, now: float, force: bool = False) -> None:
        """Take the subscriptions made or dropped since the last look (at most every POLL_S
        unless `force`)."""
        if now < self.next_poll and not force:
            return
        self.next_poll = now + POLL_S
        while True:
            try:
                message = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not message:
                continue
            if message[0] == 1:
                self.subscriptions.add(message[1:])
            elif message[0] == 0:
                self.subscriptions.discard(message[1:])
            self._wanted.clear()

    def frame(self, stream: str, spots, image: np.ndarray, t_capture: int) -> None:
        """After the spot stage's `FaceSpotter` `spots` took `image` of `stream`."""
        now = time.monotonic()
        self.poll(now)
        if not self.active:
            return
        s = self.streams.get(stream)
        if s is None:
            s = self.streams[stream] = _Stream()
        s.frames += 1
        if self.wanted("status", stream):
            signal = spots.last_signal
            s.signal.append(round(signal, 4) if math.isfinite(signal) else None)
            if now - s.since >= 1 / STATUS_HZ:
                self._status(stream, s, spots, image, now)
        if self.wanted("preview", stream) and now >= s.next_preview:
            s.next_preview = now + 1 / PREVIEW_FPS
            self._preview(stream, s, spots, image, t_capture)

    def _status(self, stream: str, s: _Stream, spots, image: np.ndarray, now: float) -> None:
        threshold = spots.threshold()
        Status(
            stream=stream,
            seq=s.seq,
            state="tracking" if spots.has_face else "no face",
            face=spots.face_box(),
            faces=[[face, *box] for face, box in spots.faces()],
            signal=s.signal[-1000:],
            threshold=round(threshold, 4) if math.isfinite(threshold) else None,
            fps=round(s.frames / (now - s.since), 2),
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            t_status=time.time_ns(),
        ).send(self.sock)
        s.seq += 1
        s.signal, s.frames, s.since = [], 0, now

    def _preview(self, stream: str, s: _Stream, spots, image: np.ndarray, t_capture: int) -> None:
        h, w = image.shape[:2]
        scale = min(1.0, PREVIEW_SIDE / max(h, w))
        if scale < 1.0:
            side = protocol.MIN_SIDE
            size = (max(side, round(w * scale)), max(side, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        face = spots.face_box()
        Preview(
            stream=stream,
            seq=s.previews,
            image=image,
            face=None if face is None else [round(v * scale, 1) for v in face],
            faces=[[i, *(round(v * scale, 1) for v in box)] for i, box in spots.faces()],
            t_capture=int(t_capture),
            scale=scale,
        ).send(self.sock)
        s.previews += 1

    def forget(self, stream: str) -> None:
        self.streams.pop(stream, None)
