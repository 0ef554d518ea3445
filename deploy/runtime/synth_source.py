"""`synth://`: SynthME's live frames as a camera, for the demo and for tests.

    synth://?fps=200&seed=7&subject=1&size=640x480&realtime=1&seconds=60&micro=3&config=standard

A SynthME stream (`model.data.synth.SynthStream`, the preset `config` at `fps`: `standard`'s
parametric faces by default, `morph-heldout` for real faces of held-out portraits that no
model was trained on, as `make demo` shows) is pasted
into a camera-sized frame (default 640 x 480) on a dark, slightly noisy background. The
face wanders slowly (a few px over tens of seconds, so detection and tracking do real
work) and leaves the frame now and then (`leave_every_s`, for `leave_s`), so the tracker
loses it and finds it again. Each frame carries its ground truth in `fields["truth"]`
while an expression (or a blink) is under way, so a consumer can score itself:
`{"kind", "onset", "apex", "offset", "label"}` (frame indices, 3-class label or "").

`realtime=1` paces frames at `fps` with wall-clock capture times; `realtime=0` yields
them as fast as they render, with capture times on the stream's own clock. Media time is
always the stream's own clock (frame t at t / fps s).
`seconds` ends the stream (default: endless; memory stays bounded, past events are
forgotten). `micro`: micro-expressions per 10 s (default 3, as SynthME's `standard`; the
pipeline benchmark raises it to gather latency samples sooner).

`faces=2` (or 3): a scene of that many people (`model.data.scenes`, as `mfvan spot-eval
--scenes` composites them): an interview's two faces side by side, subjects `subject` and
`subject + 1` at different sizes, each with its own expressions, drift and noise, and a
third, smaller, in a corner; they stay in view (a scene has no `leave_every_s`). Each
frame's truth is then `{"faces": {"0": {...}, "1": {...}}}`, the items under way per face
(the scene's order: left, right, corner), and `scene_boxes(t)` gives each face's box.
`make demo` shows two.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from urllib.parse import parse_qs, urlparse

import numpy as np

from mfvan.kernels.faces import to_grey
from mfvan.stream.ingest import Frame


def parse(url: str) -> dict:
    q = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}
    try:
        w, h = (int(n) for n in q.get("size", "640x480").split("x"))
        o = {
            "fps": float(q.get("fps", 200)),
            "seed": int(q.get("seed", 0)),
            "subject": int(q.get("subject", 1)),
            "size": (w, h),
            "realtime": q.get("realtime", "1") not in ("0", "false", "no"),
            "seconds": float(q["seconds"]) if "seconds" in q else None,
            "leave_every_s": float(q.get("leave_every_s", 45)),
            "leave_s": float(q.get("leave_s", 1.5)),
            "micro": int(q["micro"]) if "micro" in q else None,
            "config": q.get("config", "standard"),
            "faces": int(q.get("faces", 1)),
        }
    except ValueError as e:
        raise ValueError(f"bad synth:// URL {url!r}: {e}") from None
    if not (0 < o["fps"] <= 1000 and 64 <= w <= 4096 and 64 <= h <= 4096):
        raise ValueError(f"bad synth:// URL {url!r}: fps must be 0-1000, size 64-4096 px a side")
    from mfvan.model.data.synth import CONFIGS

    if o["config"] not in CONFIGS:
        raise ValueError(f"bad synth:// URL {url!r}: config must be one of {', '.join(CONFIGS)}")
    if not 1 <= o["faces"] <= 3:
        raise ValueError(f"bad synth:// URL {url!r}: faces must be 1, 2 or 3")
    if o["seconds"] is not None and not o["seconds"] > 0:
        raise ValueError(f"bad synth:// URL {url!r}: seconds must be above 0")
    return o


class SynthSource:
    def __init__(self, url: str):
        from mfvan.model.data import synth

        self.url = url
        self.opts = parse(url)
        o = self.opts
        cfg = replace(synth.CONFIGS[o["config"]], fps=o["fps"])
        if o["micro"] is not None:
            cfg = replace(cfg, micro_per_segment=o["micro"])
        self.stream = synth.SynthStream(cfg, subject=o["subject"], seed=o["seed"])
        self.config = cfg
        self.scene = _scene(cfg, o) if o["faces"] > 1 else None
        fh, fw = cfg.frame_size
        w, h = o["size"]
        if w < fw or h < fh:
            raise ValueError(f"synth:// size must be at least {fw}x{fh}, got {w}x{h}")
        self.rng = np.random.default_rng(o["seed"])
        self.background = (28 + 6 * self.rng.standard_normal((h, w))).clip(0, 255).astype(np.uint8)

    def position(self, t: float) -> tuple[int, int] | None:
        """Top-left corner of the SynthME frame at time t, or None while the face is away."""
        o = self.opts
        if o["leave_every_s"] > 0 and (t % o["leave_every_s"]) > o["leave_every_s"] - o["leave_s"]:
            return None
        fh, fw = self.config.frame_size
        w, h = o["size"]
        x = (w - fw) / 2 + 6 * math.sin(2 * math.pi * t / 23.0)
        y = (h - fh) / 2 + 4 * math.sin(2 * math.pi * t / 31.0 + 1.0)
        return int(round(x)), int(round(y))

    def truth(self, t: int) -> dict | None:
        """What is under way at frame t (scanning back only as far as an expression can
        last, so the cost does not grow with the stream's length)."""
        return _truth(self.stream, t, self.opts["fps"])

    @property
    def streams(self) -> list:
        """The SynthME streams of the faces in view: the one face's, or each person's of a
        scene (in the scene's order)."""
        return [self.stream] if self.scene is None else [x.stream for x in self.scene.layers]

    def scene_truth(self, t: int) -> dict:
        """What is under way at frame t on each face of a scene (`faces` > 1)."""
        items = {}
        for i, layer in enumerate(self.scene.layers):
            item = _truth(layer.stream, t, self.opts["fps"])
            if item is not None:
                items[str(i)] = item
        return {"faces": items} if items else None

    def scene_boxes(self, t: int) -> list[tuple[float, float, float, float]]:
        """Each face's box (x, y, w, h, frame px) at frame t of a scene."""
        return [box for box, _ in self.scene.boxes(t)]

    def _image(self, t: int):
        """(frame t's media time, ns; the camera's grey image; whether a face is in it)."""
        if self.scene is not None:
            return round(t * 1e9 / self.opts["fps"]), self.scene.grey(t), True
        frame = self.stream.frame(t)
        grey = to_grey(frame.image)  # OpenCV: NumPy's matmul would wake BLAS threads
        canvas = self.background.copy()
        at = self.position(t / self.opts["fps"])
        if at is not None:
            x, y = at
            fh, fw = grey.shape
            canvas[y : y + fh, x : x + fw] = grey
        return frame.timestamp_ns, canvas, at is not None

    def __iter__(self):
        o = self.opts
        fps = o["fps"]
        n = None if o["seconds"] is None else int(o["seconds"] * fps)
        start = time.time_ns()
        t = 0
        while n is None or t < n:
            media_ns, canvas, seen = self._image(t)
            if o["realtime"]:
                due = start + media_ns
                wait = due - time.time_ns()
                if wait > 0:
                    time.sleep(wait / 1e9)
                capture = due
            else:
                capture = media_ns
            if self.scene is not None:
                truth = self.scene_truth(t)
            else:
                truth = self.truth(t) if seen else None
            yield Frame(index=t, t_capture=capture, image=canvas, t_media=media_ns, truth=truth)
            t += 1
            if t % int(fps) == 0:
                self._forget(t - int(5 * fps))

    def _forget(self, before: int) -> None:
        """Drop expressions, blinks and gestures over before frame `before`: the timeline
        scans them all for every frame, so an endless stream must not keep them."""
        for stream in self.streams:
            timeline = stream.timeline
            timeline.expressions[:] = [e for e in timeline.expressions if e.offset >= before]
            timeline.blinks[:] = [b for b in timeline.blinks if b.end >= before]
            timeline.gestures[:] = [g for g in timeline.gestures if g.end >= before]


def _scene(config, o: dict):
    """A `faces`-person scene at the camera's size: two faces side by side (an interview,
    the left one larger), a third smaller in the top right corner; each its own subject."""
    from mfvan.model.data import scenes

    w, h = o["size"]
    fh = min(config.face_height, 0.4 * h)  # a head and shoulders fit the frame's height
    places = [
        (0.27 * w, 0.5 * h, fh),
        (0.73 * w, 0.52 * h, 0.8 * fh),
        (0.88 * w, 0.2 * h, 0.6 * fh),
    ]
    people = tuple(
        scenes.Person(o["subject"] + i, size, scenes.Route(((0.0, x, y),)))
        for i, (x, y, size) in enumerate(places[: o["faces"]])
    )
    scene = scenes.Scene("synth", (h, w), people, o["seconds"] or math.inf)
    return scenes.SceneStream(config, scene, seed=o["seed"])


def register() -> None:
    """Make `synth://` URLs open as SynthSource (the CLI calls this)."""
    from mfvan.stream import ingest

    ingest.register("synth", SynthSource, ingest.Kind(live=True, reopen_at_end=False))


def _truth(stream, t: int, fps: float) -> dict | None:
    """What is under way at frame t of a SynthME stream: an expression, else a blink or a
    gesture (scanning back only as far as an expression can last)."""
    horizon = t - int(4 * fps)
    for e in reversed(stream.timeline.expressions):
        if e.onset < horizon:
            break
        if e.onset <= t <= e.offset:
            return {
                "kind": e.kind,
                "onset": e.onset,
                "apex": e.apex,
                "offset": e.offset,
                "label": e.label3 or "",
            }
    timeline = stream.timeline
    for kind, spans in (("blink", timeline.blinks), (None, timeline.gestures)):
        n = _under_way(spans, t, horizon)
        if n is not None:
            return {
                "kind": kind or n.kind,
                "onset": n.start,
                "apex": n.start,
                "offset": n.end,
                "label": "",
            }
    return None


def _under_way(spans: list, t: int, horizon: int):
    """The newest of `spans` (blinks or gestures, in order of start) under way at frame t,
    scanning back no further than `horizon`; None if none is."""
    for n in reversed(spans):
        if n.start < horizon:
            break
        if n.start <= t <= n.end:
            return n
    return None
