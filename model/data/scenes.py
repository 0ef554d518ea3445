"""SynthME scenes: several faces in one camera's frame, each with its own ground truth.

A scene is a background and two or three people, each a `synth.SynthStream` of its own
subject (its own micro- and macro-expressions, blinks, head drift, light and sensor noise),
rendered at its own face size and laid into the frame along its own path: a face enters
from a side, leaves, crosses another, passes in front of it for a moment. What each person
does is exactly what the same subject does alone (`alone`), so a multi-face spotter can be
scored against the same faces rendered one per frame.

Layering: each person is cut from its own rendering by a soft head-and-shoulders mask
(hair, face, neck, the top of the torso, in face-height units as `synth_face` paints them)
and laid at its place in whole pixels (its own pixels, never resampled: a sub-pixel shift
would blur them, and with them what there is to spot); the one with the larger `depth` is
in front. The background is a smooth, lit wall with its own
camera noise (`synth.SubjectRenderer`'s people carry theirs).

Ground truth per face: the subject's expressions (frame indices are the scene's: the same
rate), and per frame the face's box in the frame and how much of it is in view
(`visible`: off the frame's edge and behind people in front both hide), for scoring a
tracker's ids (`mfvan spot-eval` on a scene).

Imports nothing of this project outside `mfvan.model.data`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import cv2
import numpy as np

from . import synth
from .synth_face import Placement


@dataclass(frozen=True)
class Route:
    """Where a face's centre is (frame px) at given seconds; linear in between, held
    before the first and after the last."""

    keys: tuple[tuple[float, float, float], ...]  # (seconds, cx, cy)

    def at(self, seconds: float) -> tuple[float, float]:
        keys = self.keys
        if seconds <= keys[0][0]:
            return keys[0][1], keys[0][2]
        for (t0, x0, y0), (t1, x1, y1) in zip(keys, keys[1:], strict=False):
            if seconds <= t1:
                k = (seconds - t0) / (t1 - t0) if t1 > t0 else 1.0
                return x0 + k * (x1 - x0), y0 + k * (y1 - y0)
        return keys[-1][1], keys[-1][2]


@dataclass(frozen=True)
class Person:
    """One face of a scene: its subject, its size, its path and its depth (larger: in
    front)."""

    subject: int
    face_height: float
    path: Route
    depth: int = 0


@dataclass(frozen=True)
class Scene:
    """A scene's layout: the frame's (H, W), the people, the seconds it lasts."""

    name: str
    frame_size: tuple[int, int]
    people: tuple[Person, ...]
    seconds: float


def _still(cx: float, cy: float) -> Route:
    return Route(((0.0, cx, cy),))


def layouts(seconds: float = 20.0) -> dict[str, Scene]:
    """The scenes `mfvan spot-eval --scenes` measures, at 640 x 480 (a camera's VGA):

    - `two-still`: an interview, two faces side by side (180 and 140 px), still but for
      their own head drift; they never cross.
    - `enter-leave`: one face present throughout; a second enters from the right at 25% of
      the video and leaves again at 75%.
    - `crossing`: two faces that swap sides at mid-video, the smaller passing behind the
      larger (hidden for about half a second), and a third, small, still in a corner.
    """
    h, w = 480, 640
    t = seconds
    return {
        "two-still": Scene(
            "two-still",
            (h, w),
            (Person(1, 180.0, _still(170, 230)), Person(2, 140.0, _still(470, 250))),
            t,
        ),
        "enter-leave": Scene(
            "enter-leave",
            (h, w),
            (
                Person(1, 170.0, _still(200, 240)),
                Person(
                    2,
                    150.0,
                    Route(
                        (
                            (0.2 * t, w + 120, 250),
                            (0.3 * t, 470, 250),
                            (0.7 * t, 470, 250),
                            (0.8 * t, w + 120, 250),
                        )
                    ),
                ),
            ),
            t,
        ),
        "crossing": Scene(
            "crossing",
            (h, w),
            (
                Person(
                    1,
                    190.0,
                    Route(((0.0, 170, 240), (0.4 * t, 170, 240), (0.6 * t, 450, 240))),
                    depth=1,
                ),
                Person(
                    2,
                    150.0,
                    Route(((0.0, 450, 230), (0.4 * t, 450, 230), (0.6 * t, 170, 230))),
                ),
                Person(3, 110.0, _still(560, 90)),
            ),
            t,
        ),
    }


def person_config(config: synth.SynthConfig, person: Person) -> synth.SynthConfig:
    """A person's own rendering: the scene's config at the person's face size, in a frame
    that holds the head and shoulders. Without the realistic mode's gestures (head turns,
    a hand over the mouth): a person's outline is a fixed mask moved with the head's drift,
    which a turned head or a raised hand would cross (scenes measure tracking and spotting
    of several faces; the gestures are measured on one face, docs/spotting.md)."""
    fh = person.face_height
    calm = replace(config.nuisances, turn_rate_hz=0.0, hand_rate_hz=0.0)
    return replace(
        config,
        face_height=fh,
        frame_size=(int(math.ceil(2.0 * fh)), int(2 * fh)),
        nuisances=calm,
    )


def _mask(config: synth.SynthConfig, half_width: float) -> np.ndarray:
    """Soft head-and-shoulders coverage of a person's rendering, float32 (H, W) in [0, 1]."""
    h, w = config.frame_size
    place = config.placement()
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (xs - place.cx) / place.h, (ys - place.cy) / place.h
    soft = 1.5 / place.h
    head = np.clip(
        0.5 - (((x / (half_width * 1.2)) ** 2 + ((y + 0.06) / 0.6) ** 2) ** 0.5 - 1) / (soft * 2),
        0,
        1,
    )
    neck = np.clip(0.5 - (np.abs(x) - half_width * 0.6) / soft, 0, 1) * (y > 0.2)
    torso = np.clip(0.5 - (np.abs(x) - 0.75) / soft, 0, 1) * np.clip((y - 0.62) / 0.05, 0, 1)
    return np.clip(np.maximum(head, np.maximum(neck, torso)), 0, 1).astype(np.float32)


@dataclass
class _Layer:
    person: Person
    stream: synth.SynthStream
    mask: np.ndarray
    place: Placement  # the face's place in the person's own rendering


class SceneStream:
    """A scene's frames (`frame(t)`, uint8 RGB at the scene's size) and ground truth:
    `expressions_until(t)` per face, `boxes(t)` (each face's box and the share of it in
    view). Faces are numbered by their place in `scene.people`, from 0."""

    def __init__(self, config: synth.SynthConfig, scene: Scene, seed: int = 0, video: int = 0):
        self.config, self.scene, self.seed, self.video = config, scene, seed, video
        self.layers = []
        for person in scene.people:
            cfg = person_config(config, person)
            stream = synth.SynthStream(cfg, person.subject, seed, video)
            half = stream.renderer.identity.half_width
            self.layers.append(_Layer(person, stream, _mask(cfg, half), cfg.placement()))
        self._order = sorted(range(len(self.layers)), key=lambda i: scene.people[i].depth)
        self._wall = None  # `grey`'s wall, its noise drawn once

    @cached_property
    def background(self) -> np.ndarray:
        """A wall: a colour from the seed, lit from one side, with faint smooth texture."""
        h, w = self.scene.frame_size
        rng = np.random.default_rng([self.seed, self.video, 0xBA])
        colour = rng.uniform(0.35, 0.75, 3).astype(np.float32)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        light = 0.85 + 0.3 * (xs / w) * rng.uniform(0.5, 1.0) - 0.1 * (ys / h)
        blotch = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 25)
        blotch *= 0.04 / max(float(blotch.std()), 1e-6)
        return (colour[None, None, :] * (light + blotch)[..., None] * 255).astype(np.float32)

    def _offset(self, i: int, t: int) -> tuple[float, float]:
        """Where layer i's rendering goes: the translation from its own pixels to the
        frame's."""
        layer = self.layers[i]
        cx, cy = layer.person.path.at(t / self.config.fps)
        return cx - layer.place.cx, cy - layer.place.cy

    def _place(self, i: int, t: int, shape: tuple) -> tuple | None:
        """(the frame's slices, the person's slices) where layer i's rendering of `shape`
        lies in frame t, cut at the frame's edges; None when it is wholly off the frame. In
        whole pixels: the person's own pixels, not resampled (a sub-pixel shift would blur
        them, and with them the movements to spot); a path moves in 1 px steps."""
        h, w = self.scene.frame_size
        dx, dy = (int(round(v)) for v in self._offset(i, t))
        ph, pw = shape[:2]
        x0, y0, x1, y1 = max(dx, 0), max(dy, 0), min(dx + pw, w), min(dy + ph, h)
        if x1 <= x0 or y1 <= y0:
            return None
        return (
            (slice(y0, y1), slice(x0, x1)),
            (slice(y0 - dy, y1 - dy), slice(x0 - dx, x1 - dx)),
        )

    @staticmethod
    def _mask_at(layer: _Layer, t: int) -> np.ndarray:
        """The person's mask where the head is at frame t: moved with the head's own drift
        (the renderer's backward map, as its pixels are), so the outline moves with the face
        as a real one does, instead of the face sliding under a still outline (which the
        spotter saw as motion at the face's edge)."""
        state = layer.stream.timeline.state(t)
        if state.tx == state.ty == state.angle_deg == 0.0:
            return layer.mask
        pmap = layer.stream.renderer.backward_map(replace(state, au_px={}))
        return cv2.remap(layer.mask, pmap[..., 0], pmap[..., 1], cv2.INTER_LINEAR, borderValue=0.0)

    def frame(self, t: int) -> synth.SynthFrame:
        img = self.background.copy()
        rng = np.random.default_rng([self.seed, self.video, t, 0xB6])
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(
            self.config.nuisances.noise_std
        )
        for i in self._order:
            layer = self.layers[i]
            person = layer.stream.frame(t).image.astype(np.float32)
            place = self._place(i, t, person.shape)
            if place is None:
                continue  # wholly off the frame
            dst, src = place
            alpha = self._mask_at(layer, t)[src][..., None]
            img[dst] = person[src] * alpha + img[dst] * (1 - alpha)
        image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        return synth.SynthFrame(t, round(t * 1e9 / self.config.fps), image)

    def grey(self, t: int) -> np.ndarray:
        """Frame t in grey (uint8), for a live source (`synth://?faces=2`): the people as
        `frame` lays them, on the wall with its noise drawn once (each person carries their
        own sensor noise), blended only where a person is: a fifth of `frame`'s cost."""
        if self._wall is None:
            rng = np.random.default_rng([self.seed, self.video, 0xB7])
            wall = self.background + rng.standard_normal(self.background.shape, np.float32) * (
                np.float32(self.config.nuisances.noise_std)
            )
            self._wall = cv2.cvtColor(
                np.clip(wall + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY
            )
        img = self._wall.copy()
        for i in self._order:
            layer = self.layers[i]
            person = cv2.cvtColor(layer.stream.frame(t).image, cv2.COLOR_RGB2GRAY)
            place = self._place(i, t, person.shape)
            if place is None:
                continue
            dst, src = place
            alpha, under = self._mask_at(layer, t)[src], img[dst].astype(np.float32)
            mixed = person[src] * alpha + under * (1 - alpha)
            img[dst] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
        return img

    def __iter__(self):
        t = 0
        while True:
            yield self.frame(t)
            t += 1

    def frames(self) -> int:
        return int(round(self.scene.seconds * self.config.fps))

    def expressions_until(self, face: int, t: int) -> list[synth.Expression]:
        """Face `face`'s ground truth: its expressions whose onset is before frame t."""
        return self.layers[face].stream.expressions_until(t)

    def boxes(self, t: int) -> list[tuple[tuple[float, float, float, float], float]]:
        """Each face's box (x, y, w, h; the face oval, forehead to chin, in frame px) at
        frame t, and the share of it in view (the frame's edges and the faces in front
        hide it)."""
        h, w = self.scene.frame_size
        out = []
        for layer in self.layers:
            cx, cy = layer.person.path.at(t / self.config.fps)
            fh = layer.person.face_height
            fw = 2 * layer.stream.renderer.identity.half_width * fh
            out.append((cx - fw / 2, cy - fh / 2, fw, fh))
        shares = []
        for i, (x, y, bw, bh) in enumerate(out):
            cover = np.zeros((h, w), bool)
            x0, y0 = int(max(x, 0)), int(max(y, 0))
            x1, y1 = int(min(x + bw, w)), int(min(y + bh, h))
            if x1 <= x0 or y1 <= y0:
                shares.append(0.0)
                continue
            cover[y0:y1, x0:x1] = True
            for j, (xj, yj, wj, hj) in enumerate(out):
                if self.scene.people[j].depth > self.scene.people[i].depth:
                    # the person in front hides a box of their head and shoulders
                    cover[
                        int(max(yj - 0.1 * hj, 0)) : int(max(yj + 2 * hj, 0)),
                        int(max(xj - 0.1 * wj, 0)) : int(max(xj + 1.1 * wj, 0)),
                    ] = False
            shares.append(float(cover.sum()) / (bw * bh))
        return list(zip(out, shares, strict=True))

    def alone(self, face: int) -> synth.SynthStream:
        """The same face rendered alone, in its own frame: what it does in the scene."""
        layer = self.layers[face]
        return synth.SynthStream(layer.stream.config, layer.person.subject, self.seed, self.video)


def match_faces(
    tracked: list[tuple[int, list[float]]], truth: list[tuple[tuple, float]], min_share=0.5
) -> dict[int, int]:
    """Which tracked face is which scene face in one frame: {scene face: track id}.

    `tracked`: (track id, [x, y, w, h]) as `FaceSpotter.faces()` gives them; `truth`:
    `SceneStream.boxes(t)`. Faces less than `min_share` in view are not scored. Matched by
    an assignment on the distance between centres, in units of the scene face's height;
    a pair further apart than half a face is not a match."""
    from scipy.optimize import linear_sum_assignment

    shown = [i for i, (_, share) in enumerate(truth) if share >= min_share]
    if not shown or not tracked:
        return {}
    cost = np.empty((len(shown), len(tracked)))
    for a, i in enumerate(shown):
        (x, y, w, h), _ = truth[i]
        for b, (_, (tx, ty, tw, th)) in enumerate(tracked):
            cost[a, b] = math.hypot(x + w / 2 - tx - tw / 2, y + h / 2 - ty - th / 2) / h
    rows, cols = linear_sum_assignment(cost)
    return {shown[a]: tracked[b][0] for a, b in zip(rows, cols, strict=True) if cost[a, b] < 0.5}


def id_report(per_frame: list[dict[int, int]], faces: int) -> list[dict]:
    """Per scene face, over a video's frames (`match_faces` of each): frames it was scored
    and tracked on, identity switches (its track id changed from one tracked frame to the
    next), and the share of its tracked frames that kept its first id."""
    out = []
    for face in range(faces):
        ids = [m[face] for m in per_frame if face in m]
        switches = sum(1 for a, b in zip(ids, ids[1:], strict=False) if a != b)
        kept = ids.count(ids[0]) / len(ids) if ids else 0.0
        out.append({"face": face, "tracked": len(ids), "switches": switches, "kept": kept})
    return out
