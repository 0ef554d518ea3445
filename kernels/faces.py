"""Faces: detect, align (eyes level), crop; and track between detections.

The same code prepares dataset pairs for training (`mfvan.model.data.pairs`) and crops
live frames in the spotter, so the recogniser sees in the field the crop it was trained on.

Detector: OpenCV's frontal-face Haar cascades (`default`, then `alt2` when the first finds
nothing), which ship inside the opencv-python(-headless) 4.x wheels
(`cv2.data.haarcascades`; gone from 5.0's, hence the pin); nothing is ever downloaded.
Grey frames are histogram-equalised first, which finds darker and low-contrast faces the
cascade otherwise misses.

Alignment: the two eyes are found with the Haar eye cascade inside a band of the
face box, and the crop is anchored on them: eyes level, at fixed places in the crop
(`EYE_Y`, `EYE_GAP`), so every face's regions fall at the same crop coordinates (the
spotter's regions of interest rely on it) and the crop does not follow the face box's
jitter. Without two plausible eyes (closed, occluded, tiny faces), the crop is the
unrotated face box scaled by `scale`: a sensible fallback, never a failure. One affine
warp (after an area-filtered downscale) makes the `size` x `size` crop.

Imports nothing of this project.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np


def _cascade(name: str) -> cv2.CascadeClassifier:
    path = Path(cv2.data.haarcascades) / name
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(
            f"OpenCV's {name} is missing from {path.parent}: opencv-python(-headless)"
            " 4.x is required (OpenCV 5 no longer ships the Haar cascades)"
        )
    return cascade


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 grey from grey or RGB."""
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


DISCOVER_SCALE = 0.75  # `FaceDetector.detect_all` searches a frame at this scale


class FaceDetector:
    """Finds faces in a frame: the largest (`detect`), or all (`detect_all`)."""

    def __init__(self, min_size_fraction: float = 0.2):
        self.min_size_fraction = min_size_fraction
        # The default cascade first, then alt2, which finds some faces the default misses.
        self._faces = [
            _cascade("haarcascade_frontalface_default.xml"),
            _cascade("haarcascade_frontalface_alt2.xml"),
        ]
        self._eyes = _cascade("haarcascade_eye.xml")

    def detect(self, image: np.ndarray, near: Box | None = None) -> Box | None:
        """The largest face, or None. With `near` (a tracker's crop square), only a square
        1.4 times its side around it is searched, for faces at least 40% of its side: a
        face moves and scales little between re-detections, and the search costs a fraction
        of the whole frame's. (The tracker searches the whole frame when this finds none.)"""
        x0 = y0 = 0
        side = int(min(image.shape[:2]) * self.min_size_fraction)
        if near is not None:
            h, w = image.shape[:2]
            half = 0.7 * max(near.w, near.h)
            cx, cy = near.centre
            x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
            image = image[y0 : int(min(cy + half, h)), x0 : int(min(cx + half, w))]
            side = max(side, int(0.6 * half))  # nor does it shrink by half between searches
        box = self._detect(image, side)
        return None if box is None else Box(box.x + x0, box.y + y0, box.w, box.h)

    def detect_all(self, image: np.ndarray, scale: float = DISCOVER_SCALE) -> list[Box]:
        """Every face in the frame at least `min_size_fraction` of its shorter side, the
        largest first (alt2 only when the default cascade finds none, as `detect`).

        Searched at `scale` of the frame's size while the smallest face sought is still
        twice the cascades' own 24 px there: at `DISCOVER_SCALE`, 0.56 of the pixels, for
        the whole-frame search that a tracker of several faces runs every second to find
        new ones; the boxes are a face's place and size to start a track from, and its
        eyes are then searched at full size. At half the size the crossing scene's front
        face changed id 5 times (90% of its frames kept; `tests/kernels/test_multiface.py`);
        at 0.75 it held."""
        grey = to_grey(image)
        side = min(int(min(grey.shape) * self.min_size_fraction), *grey.shape)
        k = scale if side * scale >= 48 else 1.0
        if k != 1.0:
            grey = cv2.resize(grey, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
            side = int(side * k)
        grey = cv2.equalizeHist(grey)
        for cascade in self._faces:
            faces = cascade.detectMultiScale(grey, 1.1, 4, minSize=(side, side))
            if len(faces):
                return [
                    Box(float(x) / k, float(y) / k, float(w) / k, float(h) / k)
                    for x, y, w, h in sorted(faces, key=lambda f: -f[2] * f[3])
                ]
        return []

    def _detect(self, image: np.ndarray, side: int) -> Box | None:
        grey = cv2.equalizeHist(to_grey(image))
        side = min(side, *grey.shape)
        for cascade in self._faces:
            faces = cascade.detectMultiScale(grey, 1.1, 4, minSize=(side, side))
            if len(faces):
                x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
                return Box(float(x), float(y), float(w), float(h))
        return None

    def eyes(
        self, image: np.ndarray, box: Box
    ) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Centres of the (image-left, image-right) eyes inside the face box, or None.

        The search covers the upper 55% of the box at scale steps of 1.2: 14.8 ms on a
        640 x 480 camera's 239 px face, where the upper 60% at steps of 1.1 took 28 ms,
        the largest part of a 200 fps stream's face search. On 200 frames of three bench
        cameras (seeds 11-13) both found eyes on every frame, 1 px apart (median; 1.5 px
        at the 90th percentile), inside the tracker's median of five pairs and its `hold`
        of 6% of the crop (16 px). A narrower band (15-55%, 12.7 ms) moved the crops of
        two seed-0 spotter tests enough to lose a borderline micro-expression and add two
        false spots (tests/kernels/test_spotter.py), so it was not taken."""
        grey = to_grey(image)
        x0, y0 = int(max(box.x, 0)), int(max(box.y, 0))
        upper = grey[y0 : int(box.y + box.h * 0.55), x0 : int(box.x + box.w)]
        if upper.size == 0:
            return None
        side = max(4, int(box.w * 0.12))
        found = self._eyes.detectMultiScale(
            cv2.equalizeHist(upper),
            1.2,
            3,
            minSize=(side, side),
            maxSize=(int(box.w * 0.4), int(box.w * 0.4)),
        )
        centres = sorted(
            ((x0 + ex + ew / 2, y0 + ey + eh / 2) for ex, ey, ew, eh in found), key=lambda c: c[0]
        )
        left = [c for c in centres if c[0] < box.centre[0]]
        right = [c for c in centres if c[0] >= box.centre[0]]
        if not left or not right:
            return None
        a, b = left[-1], right[0]  # the pair nearest the midline
        if abs(a[1] - b[1]) > 0.15 * box.w or (b[0] - a[0]) < 0.2 * box.w:
            return None  # implausible pair
        return a, b


@dataclass(frozen=True)
class Crop:
    """An affine map from a frame to a size x size aligned face crop."""

    matrix: np.ndarray  # 2 x 3, frame -> crop
    size: int
    aligned: bool  # True when the eyes were found and levelled

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The crop of `image`. When the crop shrinks the face (a 256 px face to a 64 or 128
        px crop), the frame is first area-averaged down to the crop's scale and the rest is
        a bilinear warp near 1:1. `warpAffine` alone has no area filter (INTER_AREA falls
        back to bilinear there): its bilinear samples of a 2-4x larger face alias, and an
        aliased crop of a face moved by half a pixel is not the first crop moved by a
        quarter pixel, which the spotter would read as motion, region by region."""
        scale, footprint, matrix = self._plan(image.shape[:2])
        if footprint is not None:
            # only the part of the frame the crop covers is filtered (a 640 x 480 frame
            # costs 0.6 ms; the face, a fraction of that); the part depends on the crop
            # alone, so consecutive crops are sampled identically
            x0, y0, x1, y1 = footprint
            image = cv2.resize(
                image[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA
            )
        return cv2.warpAffine(
            image,
            matrix,
            (self.size, self.size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )

    def _plan(self, shape: tuple[int, int]):
        """(scale, footprint or None, the matrix to warp with) for frames of `shape`: the
        same for every frame until the crop changes, so worked out once (it cost 0.25 ms a
        frame, a twentieth of a 200 fps stream's budget)."""
        plans = self.__dict__.setdefault("_plans", {})  # frozen: no attribute to assign
        if shape not in plans:
            m = self.matrix
            scale = math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]))
            if scale < 0.8:
                x0, y0, x1, y1 = self._footprint(shape)
                matrix = m.copy()
                matrix[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
                matrix[:, :2] /= scale
                plans[shape] = (scale, (x0, y0, x1, y1), matrix)
            else:
                plans[shape] = (scale, None, m)
        return plans[shape]

    def _footprint(self, shape) -> tuple[int, int, int, int]:
        """The frame's pixels the crop covers (x0, y0, x1, y1), with a margin of 4 px."""
        inverse = cv2.invertAffineTransform(self.matrix)
        n = self.size
        corners = inverse @ np.array([[0, 0, 1], [n, 0, 1], [0, n, 1], [n, n, 1]], np.float64).T
        h, w = shape[:2]
        x0, y0 = (max(int(v) - 4, 0) for v in corners.min(axis=1))
        x1 = min(int(math.ceil(corners[0].max())) + 4, w)
        y1 = min(int(math.ceil(corners[1].max())) + 4, h)
        if x1 <= x0 or y1 <= y0:  # the crop lies outside the frame: keep it all
            return 0, 0, w, h
        return x0, y0, x1, y1


# Canonical eye positions in an aligned crop, as fractions of its side: the eyes' midpoint
# sits at EYE_Y, EYE_GAP apart (about the MEGC crops' proportions: eyes a little above the
# middle, brows to chin inside).
EYE_Y = 0.40
EYE_GAP = 0.30


def make_crop(box: Box, size: int, eyes=None, scale: float = 1.2) -> Crop:
    """The aligned crop of one face. With `eyes` (image-left, image-right centres) the crop
    is anchored on them, eyes level at their canonical place (EYE_Y, EYE_GAP): eyes are
    found to a pixel or two, face boxes jitter by far more. Without, the face box scaled by
    `scale` around its centre."""
    if eyes is None:
        cx, cy = box.centre
        return crop_at(cx, cy, scale * max(box.w, box.h), 0.0, size, False)
    return crop_at(*eye_geometry(eyes), size, True)


class Geometry(NamedTuple):
    """A crop's square in the frame: its centre, side and rotation (degrees)."""

    cx: float
    cy: float
    side: float
    angle: float


def eye_geometry(eyes) -> Geometry:
    """The canonical crop's square for two eyes."""
    (lx, ly), (rx, ry) = eyes
    dist = math.hypot(rx - lx, ry - ly)
    angle = math.atan2(ry - ly, rx - lx)
    side = dist / EYE_GAP
    down = (0.5 - EYE_Y) * side  # from the eyes' midpoint to the crop's centre, face-down
    mx, my = (lx + rx) / 2, (ly + ry) / 2
    return Geometry(
        mx - down * math.sin(angle), my + down * math.cos(angle), side, math.degrees(angle)
    )


def crop_at(cx: float, cy: float, side: float, angle: float, size: int, aligned: bool) -> Crop:
    """The size x size crop of the side x side square centred on (cx, cy), rotated by
    `angle` degrees about its centre."""
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    matrix[0, 2] += size / 2 - cx
    matrix[1, 2] += size / 2 - cy
    return Crop(matrix.astype(np.float64), size, aligned)


def centre_crop(shape: tuple[int, int], size: int) -> Crop:
    """The fallback when no face is found: the largest centred square of the frame."""
    h, w = shape[:2]
    side = min(h, w)
    return make_crop(Box((w - side) / 2, (h - side) / 2, side, side), size, scale=1.0)


class _Pending(NamedTuple):
    """A face search under way, and the media time at which its result takes effect."""

    future: Future
    due_ns: int


class Found(NamedTuple):
    """One face a search found: its box, its eyes (or None), its appearance (`appearance`)."""

    box: Box
    eyes: tuple | None
    look: np.ndarray | None


@dataclass(frozen=True)
class TrackerParams:
    """The tracker's settings (the reasons are `FaceTracker`'s docstring's)."""

    redetect_s: float = 0.2  # media seconds between two face searches
    hold: float = 0.06  # a new crop only past this fraction of the side (or 2 degrees)
    max_misses: int = 8  # searches in a row that find nothing before a face is lost
    scale: float = 1.2  # a face box's side times this is the crop's, without eyes
    detect_delay_s: float = 0.1  # media seconds from a searched frame to its result
    frame_ns: int = 5_000_000  # the frames' spacing when they come without times
    max_faces: int = 1  # faces tracked at once, each with its own id
    discover_s: float = 1.0  # with several faces: seconds between whole-frame searches
    forget_s: float = 2.0  # a lost face's id is given back to it if it returns within this


MIN_LOOK = 0.4  # two looks less alike than this are two faces (`appearance`)
LOOK_SIDE = 24  # px: a face's appearance is its aligned crop at this side


def appearance(grey: np.ndarray, box: Box, eyes=None) -> np.ndarray | None:
    """A face's look, to tell two faces apart: its crop (`make_crop`: eye-anchored when
    the eyes were found, so the same face gives the same look whatever its box's jitter)
    at 24 x 24, zero mean, unit norm, so the dot product of two looks is their correlation
    (1 for the same face under any brightness and contrast). None for a flat patch."""
    v = make_crop(box, LOOK_SIDE, eyes).apply(grey).astype(np.float32).ravel()
    v -= v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-6 else None


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


class FaceTrack:
    """One face: its id, its crop, and the detections behind it.

    The crop is `make_crop`'s eye-anchored one, from the median of the last 5 plausible
    eye pairs (a pair whose distance is off the track's by more than 15% is ignored).
    Without eyes, the face box is used only to start a track or when the face has clearly
    moved. A new geometry replaces the crop only when it differs by more than `hold` of
    the side (or 2 degrees): smaller head motion stays in the crop as rigid motion, which
    the spotter subtracts. `version` changes with every new crop (numbered by the tracker,
    so no two tracks' crops share one). The face is lost after `max_misses` searches in a
    row find nothing."""

    def __init__(self, track_id: int, size: int, params: TrackerParams):
        self.id = track_id
        self.size = size
        self.hold, self.scale, self.max_misses = params.hold, params.scale, params.max_misses
        self.crop: Crop | None = None
        self.version = 0
        self.geometry: Geometry | None = None  # the current crop's square
        self.last: Geometry | None = None  # the latest square it had (kept when lost)
        self.look: np.ndarray | None = None  # the face's appearance, averaged
        self.seen: tuple[float, float] | None = None  # the last face box's centre
        self.velocity = (0.0, 0.0)  # px per search, of that centre (smoothed)
        self.lost_ns: int | None = None  # media time it was lost at (None: in view)
        self._eyes: deque = deque(maxlen=5)  # eye geometries of the last detections
        self._misses = 0

    def near(self) -> Box | None:
        """The face as a box, where its next search looks (None: lost)."""
        if self.geometry is None:
            return None
        cx, cy, side, _ = self.geometry
        return Box(cx - side / 2, cy - side / 2, side, side)

    def predicted(self) -> tuple[float, float]:
        """Where the face's box centre should be at the next search (its motion carried
        on; through a miss too)."""
        cx, cy = self.seen if self.seen is not None else self.geometry[:2]
        return cx + self.velocity[0], cy + self.velocity[1]

    def _propose(self, box: Box, eyes):
        """The crop geometry this detection suggests, or None to keep the current one."""
        if eyes is None:
            cx, cy = box.centre
            fallback = Geometry(cx, cy, self.scale * max(box.w, box.h), 0.0)
            if self.geometry is None:
                return fallback, False
            g = self.geometry
            far = max(abs(cx - g.cx), abs(cy - g.cy)) > 0.25 * g.side
            return (fallback, False) if far else None
        geometry = eye_geometry(eyes)
        if self._eyes and abs(geometry.side / np.median([e.side for e in self._eyes]) - 1) > 0.15:
            return None  # an implausible pair for this face (a brow or a nostril)
        if self._eyes:
            m = np.median(np.asarray(self._eyes), axis=0)
            if max(abs(geometry.cx - m[0]), abs(geometry.cy - m[1])) > 0.25 * m[2]:
                self._eyes.clear()  # the face has moved: the pairs before are of elsewhere
        self._eyes.append(geometry)
        return Geometry(*np.median(np.asarray(self._eyes), axis=0)), True

    def _moved(self, proposal) -> bool:
        cx, cy, side, angle = self.geometry
        tol = self.hold * side
        return (
            abs(proposal.cx - cx) > tol
            or abs(proposal.cy - cy) > tol
            or abs(proposal.side - side) > tol
            or abs(proposal.angle - angle) > 2.0
        )

    def settle(self, found: Found | None, version: int, covered: bool = False) -> bool:
        """Take a search's result for this face: a new crop (numbered `version`; True is
        returned when it is taken), the same one, or a miss (the face lost after
        `max_misses`, or at once when another face was found over its place: `covered`)."""
        if found is None:
            self._misses += 1
            if self.seen is not None:  # hidden, it goes on moving
                self.seen = (self.seen[0] + self.velocity[0], self.seen[1] + self.velocity[1])
            if self.crop is None or covered or self._misses >= self.max_misses:
                self.crop = self.geometry = None  # lost
                self._eyes.clear()
            return False
        self._misses = 0
        if found.look is not None:
            self.look = found.look if self.look is None else _blend(self.look, found.look)
        bx, by = found.box.centre
        if self.seen is not None:
            vx, vy = self.velocity
            self.velocity = (0.5 * (vx + bx - self.seen[0]), 0.5 * (vy + by - self.seen[1]))
        self.seen = (bx, by)
        proposed = self._propose(found.box, found.eyes)
        if proposed is None:
            return False
        proposal, aligned = proposed
        if self.geometry is None or self._moved(proposal):
            self.geometry = self.last = proposal
            self.crop = crop_at(*proposal, self.size, aligned)
            self.version = version
            return True
        return False

    def forget_motion(self) -> None:
        """A lost face's last motion says nothing of where it comes back."""
        self.velocity = (0.0, 0.0)
        self.seen = None
        self._misses = 0


def _blend(a: np.ndarray, b: np.ndarray, keep: float = 0.8) -> np.ndarray:
    """A running average of two looks, renormalised."""
    v = keep * a + (1 - keep) * b
    return v / max(float(np.linalg.norm(v)), 1e-6)


class FaceTracker:
    """Searches for faces every `redetect_s` seconds of media time (or when one was lost)
    and keeps each face's crop still in between (`FaceTrack`).

    `redetect_s` is 0.2 s (it was 0.1 s): a search (the face near the last one, then its
    eyes) costs about 43 ms of CPU on a 640 x 480 frame, whatever the stream's frame rate,
    so ten a second took 0.43 of a core per camera, more than the flow of a 30 fps
    stream. Five a second changed no spotting result on the held-out H.264 cells but
    one (photographic CRF 23 at 200 fps: F1 0.758 to 0.762; at 60 fps 0.860 to 0.870;
    30 fps, CBR, H.265 and parametric CRF 23 the same intervals): the crop is the median of
    the last five eye pairs and moves only past `hold`, so it changes as rarely as before,
    and head motion in between is the spotter's rigid motion. A face that is not found is
    held (its crop kept, its spotter fed) for `max_misses` searches, 1.6 s, then dropped: a
    hand over the mouth hides a face from the Haar cascades for as long as it is raised
    (SynthME's realistic mode: up to 1.8 s), and with 3 searches (0.6 s) the face was lost
    under it, its spotter started again after it and blind for its warm-up (held-out
    photographic faces at 30 fps: 2 of 7 hands lost the face, 9 and 3 frames).

    Detecting every frame at 200 fps is waste, and a crop that follows the detector's
    jitter would look like motion to the spotter, larger than a micro-expression. Haar face
    boxes jitter badly (on some SynthME faces their width jumps between 100 and 200 px from
    one detection to the next) while the eyes found inside them move by a pixel or two. So
    each face's crop is anchored on its eyes and moves only past `hold` (`FaceTrack`).

    **Several faces** (`max_faces` > 1). Each search looks near every tracked face (as
    with one) and, every `discover_s` (1 s) or when a face was not found near its place,
    over the whole frame for faces not yet tracked (at 0.75 of the frame's size,
    `DISCOVER_SCALE`, while every face was found where it was; at full size when one was
    not, or none is tracked yet, so that one face gets the crops of `max_faces` 1). A face
    not found is held, its crop kept and its spotter fed, for `max_misses` searches (8:
    1.6 s, so that a hand over the mouth does not lose it), then lost; at once if another
    face was found over its place (`_covered`: a held track that moved on with its last
    motion swapped ids with a face crossing it). The faces found are matched to the tracks
    by an assignment (`scipy.optimize.linear_sum_assignment`) whose cost adds the
    distance from the track's predicted centre (its last motion carried on, through misses
    too) in sides, the log ratio of sizes, and twice one minus the correlation of their
    looks (`appearance`: eye-aligned crops, so a box's jitter barely changes a look); a
    match further than 0.6 of a side, 0.5 in log size, or less alike than `MIN_LOOK` (0.4:
    another face, however near) is refused. A face no track takes starts a
    new track (up to `max_faces`, the largest first), with a new id, unless it looks like a
    face lost in the last `forget_s` (2 s; correlation over 0.6, within two sides of where it
    was lost): then that face's id comes back, so a face hidden for a moment by another
    passing in front, or by a hand, keeps its id. Ids count from 1 per tracker and are
    never reused for another face. A face's eye history is cleared when a new pair lies
    more than a quarter of a side from its median (the face has moved: a median of pairs
    from before a crossing put the crop where the face had been). With one face
    (`max_faces` 1, this class's default; the spot stage's is 4) nothing is matched: the
    one face found is the face, and a face found after one was lost takes its id back
    (there is no other it could be). A face found far from every track (past the gate)
    that looks like a tracked face not found this time (correlation of 0.7 or more) is that
    face, moved: a camera that restarted with another view, a picture that jumped; it keeps
    its id and spotter.

    Time is the frames' media time (`update(image, t_ns)`), never the wall clock, so a
    file gives the same crops at any CPU load and replay speed. Without times, frames are
    taken to be `frame_ns` apart.

    `background`: search in a worker thread, so that the frames in between do not wait for
    it (the face near the last one and its eyes: about 43 ms of CPU on a 640 x 480 frame,
    eight frames at 200 fps). A search takes effect at the first frame `detect_delay_s`
    of media time after the frame it searched, waiting for the search there if it has not
    ended: later frames never depend on how fast the thread ran. `detect_delay_s` is 0.1 s
    (it was 0.025 s, less than a search takes: every search stalled the stream for 20 ms or
    more, and a spot stage near a full core never caught up, p99 latency 0.4-0.8 s). On
    the held-out H.264 cells (with `redetect_s` 0.2 and the spotter's `measure_hz` 100):
    photographic CRF 23 at 200 fps F1 0.762 to 0.785, CBR 0.901 to 0.911, H.265 0.899 to
    0.909, parametric CRF 23 0.577 to 0.547; photographic CRF 23 at 60 fps 0.870 to 0.860,
    at 30 fps 0.815 to 0.803. A stream's first crop comes 0.1 s after its first frame.
    `scheduled` (always true with `background`) gives a
    tracker without a thread the same schedule: it searches at once, and the result takes
    effect `detect_delay_s` later, so offline crops are the live ones frame for frame.

    `crop`, `version` and `geometry` are the first tracked face's (the oldest in view);
    `tracks` holds every face in view.
    """

    def __init__(
        self,
        detector: FaceDetector | None = None,
        size: int = 128,
        params: TrackerParams = TrackerParams(),
        background: bool = False,
        scheduled: bool = False,
    ):
        if params.max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {params.max_faces}")
        self.detector = detector or FaceDetector()
        self.size = size
        self.params = params
        self.redetect_ns = int(params.redetect_s * 1e9)
        self.discover_ns = int(params.discover_s * 1e9)
        self.forget_ns = int(params.forget_s * 1e9)
        self.max_faces = params.max_faces
        scheduled = scheduled or background
        self.detect_delay_ns = int(params.detect_delay_s * 1e9) if scheduled else 0
        self.frame_ns = params.frame_ns
        self.tracks: list[FaceTrack] = []  # the faces in view, oldest first
        self.lost: list[FaceTrack] = []  # faces lost less than `forget_s` ago
        self.versions = 0  # crops made, over all faces: each crop's `version`
        self.ids = 0  # ids given
        self._searched_ns: int | None = None  # media time of the last search's frame
        self._discovered_ns: int | None = None  # and of the last whole-frame search
        self._frames = 0
        self._now_ns = 0
        # searches in a worker thread (OpenCV releases the GIL): frames go on with the
        # current crops meanwhile, and new ones take effect when the search is due
        self._pool = (
            # at the process's own priority: the frame a search is due at waits for it, so
            # a search starved by a lowered priority (nice +10 got a tenth of a busy core)
            # stalled the whole stream; a busy box ran its spot stage at a third of real time
            ThreadPoolExecutor(1, "mfvan-detect") if background else None
        )
        self._pending: _Pending | None = None  # a search under way

    # the first face's crop, for one-face callers
    @property
    def _first(self) -> FaceTrack | None:
        return next((t for t in self.tracks if t.crop is not None), None)

    @property
    def crop(self) -> Crop | None:
        first = self._first
        return None if first is None else first.crop

    @property
    def version(self) -> int:
        """The first face's crop's number (the latest crop's while no face is in view)."""
        first = self._first
        return self.versions if first is None else first.version

    @property
    def geometry(self) -> Geometry | None:
        """The first face's crop square in the frame (None without a face)."""
        first = self._first
        return None if first is None else first.geometry

    @property
    def in_view(self) -> list[FaceTrack]:
        """The faces with a crop now, oldest first."""
        return [t for t in self.tracks if t.crop is not None]

    def update(self, image: np.ndarray, t_ns: int | None = None) -> Crop | None:
        """Track the faces of this frame (media time `t_ns`); the first face's crop, or
        None while no face is found (every face's: `in_view`)."""
        if t_ns is None:
            t_ns = self._frames * self.frame_ns
        self._frames += 1
        self._now_ns = t_ns
        if self._pending is not None and t_ns >= self._pending.due_ns:
            self._settle(self._pending.future.result())
            self._pending = None
        due = self._searched_ns is None or t_ns - self._searched_ns >= self.redetect_ns
        if (not self.in_view or due) and self._pending is None:
            self._searched_ns = t_ns
            nears = [t.near() for t in self.tracks if t.geometry is not None]
            discover = self.max_faces > 1 and (
                self._discovered_ns is None or t_ns - self._discovered_ns >= self.discover_ns
            )
            if discover:
                self._discovered_ns = t_ns
            if self._pool is not None:
                future = self._pool.submit(self._search, np.array(image), nears, discover)
                self._pending = _Pending(future, t_ns + self.detect_delay_ns)
            elif self.detect_delay_ns:
                future: Future = Future()
                future.set_result(self._search(image, nears, discover))
                self._pending = _Pending(future, t_ns + self.detect_delay_ns)
            else:
                self._settle(self._search(image, nears, discover))
        return self.crop

    def restart_clock(self) -> None:
        """The stream's media time jumped (a camera restarted, two recordings joined): a
        search under way takes effect now, and the next frame is searched, instead of
        waiting for a media time the new clock may not reach for hours. The crops and the
        faces' tracks are kept; lost faces are forgotten (their times are of the old clock)."""
        if self._pending is not None:
            self._settle(self._pending.future.result())
            self._pending = None
        self._searched_ns = self._discovered_ns = None
        self.lost.clear()

    def _search(self, image: np.ndarray, nears: list[Box], discover: bool) -> list[Found]:
        """The faces found near each tracked one and, with `discover` or when one is not
        found near its place, over the whole frame (in the worker thread when searching in
        the background). With one face: the face near the last one, else the largest in
        the frame; at most one."""
        grey = to_grey(image)
        if self.max_faces == 1:
            box = self.detector.detect(grey, near=nears[0] if nears else None)
            if box is None and nears:  # it moved further: search everywhere
                box = self.detector.detect(grey)
            return [] if box is None else [self._found(grey, box)]
        boxes = [b for b in (self.detector.detect(grey, near=n) for n in nears) if b is not None]
        if len(boxes) < len(nears) or not nears:
            # a face to find (the first, or one not where it was): at full size, as the
            # one-face tracker searches, so one face gets the same crops whatever max_faces
            boxes += self.detector.detect_all(grey, scale=1.0)
        elif discover:  # every face where it was: new ones, at a lower cost
            boxes += self.detector.detect_all(grey)
        kept: list[Box] = []
        for box in boxes:  # the near ones first: a face found twice is kept once
            if all(iou(box, k) < 0.4 for k in kept):
                kept.append(box)
        return [self._found(grey, b) for b in kept[: self.max_faces + 2]]

    def _found(self, grey: np.ndarray, box: Box) -> Found:
        eyes = self.detector.eyes(grey, box)
        return Found(box, eyes, appearance(grey, box, eyes) if self.max_faces > 1 else None)

    def _settle(self, found: list[Found]) -> None:
        """Take a search's result: each face's new crop, the same one, or a miss; new
        faces tracked, returning ones given their ids back."""
        if self.max_faces == 1:
            if not self.tracks and found:
                self.tracks.append(self.lost.pop() if self.lost else self._new_track())
            if self.tracks:
                self._settle_one(self.tracks[0], found[0] if found else None)
            return
        matched, free = self._match(found)
        free.sort(key=lambda f: -f.box.w * f.box.h)  # the largest first
        # a face found far from every track that looks like a tracked face not found this
        # time is that face, moved (a camera that restarted with another view, a jump):
        # it keeps its id and its spotter, as the one face does
        for f in list(free):
            missed = [t for t in self.tracks if t.id not in matched and t.geometry is not None]
            moved = _most_alike(f, missed, MOVED_LOOK)
            if moved is not None:
                matched[moved.id] = f
                free.remove(f)
        for track in list(self.tracks):
            self._settle_one(track, matched.get(track.id), _covered(track, found))
        self.lost = [t for t in self.lost if self._now_ns - t.lost_ns < self.forget_ns]
        for f in free:
            if len(self.tracks) >= self.max_faces:
                break
            track = self._returning(f) or self._new_track()
            self.tracks.append(track)
            self._settle_one(track, f)

    def _settle_one(self, track: FaceTrack, found: Found | None, covered: bool = False) -> None:
        if track.settle(found, self.versions + 1, covered):
            self.versions += 1
        if track.crop is None and found is None:  # lost (or never started)
            self.tracks.remove(track)
            track.lost_ns = self._now_ns
            track.forget_motion()
            self.lost.append(track)

    def _new_track(self) -> FaceTrack:
        self.ids += 1
        return FaceTrack(self.ids, self.size, self.params)

    def _match(self, found: list[Found]) -> tuple[dict[int, Found], list[Found]]:
        """Which face found is which tracked face: {track id: face}, and the faces no
        track took."""
        live = [t for t in self.tracks if t.geometry is not None]
        if not live or not found:
            return {}, list(found)
        from scipy.optimize import linear_sum_assignment

        cost = np.full((len(live), len(found)), 1e6)
        for i, track in enumerate(live):
            for j, f in enumerate(found):
                cost[i, j] = _match_cost(track, f)
        rows, cols = linear_sum_assignment(cost)
        pairs = zip(rows, cols, strict=True)
        matched = {live[i].id: found[j] for i, j in pairs if cost[i, j] < 1e6}
        taken = {id(f) for f in matched.values()}
        return matched, [f for f in found if id(f) not in taken]

    def _returning(self, f: Found) -> FaceTrack | None:
        """A face lost less than `forget_s` ago that this one looks like, near where it was
        lost (the best such), taken out of `lost`; None if none."""
        bx, by = f.box.centre
        near = [
            t for t in self.lost if max(abs(bx - t.last.cx), abs(by - t.last.cy)) <= 2 * t.last.side
        ]
        best = _most_alike(f, near, RETURN_LOOK)
        if best is not None:
            self.lost.remove(best)
            best.lost_ns = None
        return best


COVER_REACH = 0.75  # `_covered`: a face this near (in sides, across and down) covers one


def _covered(track: FaceTrack, found: list[Found]) -> bool:
    """Whether a face found this search has its centre within `COVER_REACH` of `track`'s
    crop square's side of its centre, across and down: when the track's own face was not
    found, another is in front of it. Then it is lost at once (its id comes back with it,
    `FaceTracker._returning`), not held for `max_misses` searches: a held track moves on
    with its last motion, and two faces crossing swapped ids (the crossing scene, seeds
    11-12 at 30 fps: 4 and 2 switches on the crossing faces with the hold of 8 searches
    alone, none with 3; with this rule at half a side 0 and 2 each, at 0.75 none)."""
    if track.geometry is None:
        return False
    g, reach = track.geometry, track.geometry.side * COVER_REACH
    return any(
        abs(f.box.centre[0] - g.cx) < reach and abs(f.box.centre[1] - g.cy) < reach for f in found
    )


RETURN_LOOK = 0.6  # a face found near where one was lost is that face when this alike
MOVED_LOOK = 0.7  # a face found far from a missed track is that face when this alike


def _most_alike(f: Found, tracks: list[FaceTrack], least: float) -> FaceTrack | None:
    """The track whose look is most like `f`'s, if at least `least` alike."""
    best, best_corr = None, least
    for track in tracks:
        if track.look is None or f.look is None:
            continue
        corr = float(track.look @ f.look)
        if corr >= best_corr:
            best, best_corr = track, corr
    return best


def _match_cost(track: FaceTrack, f: Found) -> float:
    """The cost of taking face `f` for `track` (1e6: refused)."""
    px, py = track.predicted()
    side = track.geometry.side
    bx, by = f.box.centre
    distance = math.hypot(bx - px, by - py) / side
    size = abs(math.log(track.scale * max(f.box.w, f.box.h) / side))
    if distance > 0.6 or size > 0.5:
        return 1e6
    if track.look is None or f.look is None:
        return distance + size + 1.0
    corr = float(track.look @ f.look)
    if corr < MIN_LOOK:
        return 1e6  # another face, however near
    return distance + size + 2.0 * (1.0 - corr)
