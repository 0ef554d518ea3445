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


class FaceDetector:
    """Finds the largest face in a frame."""

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
    """A face detection under way, and the media time at which its result takes effect."""

    future: Future
    due_ns: int


@dataclass(frozen=True)
class TrackerParams:
    """The tracker's settings (the reasons are `FaceTracker`'s docstring's)."""

    redetect_s: float = 0.2  # media seconds between two face searches
    hold: float = 0.06  # a new crop only past this fraction of the side (or 2 degrees)
    max_misses: int = 3  # searches in a row that find nothing before a face is lost
    scale: float = 1.2  # a face box's side times this is the crop's, without eyes
    detect_delay_s: float = 0.1  # media seconds from a searched frame to its result
    frame_ns: int = 5_000_000  # the frames' spacing when they come without times


class FaceTracker:
    """Detects every `redetect_s` seconds of media time (or when the face was lost) and
    keeps the crop still in between.

    `redetect_s` is 0.2 s (it was 0.1 s): a search (the face near the last one, then its
    eyes) costs about 43 ms of CPU on a 640 x 480 frame, whatever the stream's frame rate,
    so ten a second took 0.43 of a core per camera, more than the flow of a 30 fps
    stream. Five a second changed no spotting result on the held-out H.264 cells but
    one (photographic CRF 23 at 200 fps: F1 0.758 to 0.762; at 60 fps 0.860 to 0.870;
    30 fps, CBR, H.265 and parametric CRF 23 the same intervals): the crop is the median of
    the last five eye pairs and moves only past `hold`, so it changes as rarely as before,
    and head motion in between is the spotter's rigid motion. A face that leaves is
    dropped after `max_misses` searches: 0.6 s instead of 0.3 s.

    Detecting every frame at 200 fps is waste, and a crop that follows the detector's
    jitter would look like motion to the spotter, larger than a micro-expression. Haar face
    boxes jitter badly (on some SynthME faces their width jumps between 100 and 200 px from
    one detection to the next) while the eyes found inside them move by a pixel or two. So
    the crop is `make_crop`'s eye-anchored one, from the median of the last 5 plausible eye
    pairs (a pair whose distance is off the track's by more than 15% is ignored). Without
    eyes, the face box is used only to start a track or when the face has clearly moved.
    A new geometry replaces the crop only when it differs by more than `hold` of the side
    (or 2 degrees): smaller head motion stays in the crop as rigid motion, which the spotter
    subtracts. `version` counts crop changes, so a consumer can tell when crops stop being
    comparable. A face is lost after `max_misses` detections in a row find nothing.

    Time is the frames' media time (`update(image, t_ns)`), never the wall clock, so a
    file gives the same crops at any CPU load and replay speed. Without times, frames are
    taken to be `frame_ns` apart.

    `background`: detect in a worker thread, so that the frames in between do not wait for
    it (the face near the last one and its eyes: about 43 ms of CPU on a 640 x 480 frame,
    eight frames at 200 fps). A detection takes effect at the first frame `detect_delay_s`
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
    """

    def __init__(
        self,
        detector: FaceDetector | None = None,
        size: int = 128,
        params: TrackerParams = TrackerParams(),
        background: bool = False,
        scheduled: bool = False,
    ):
        self.detector = detector or FaceDetector()
        self.size = size
        self.redetect_ns = int(params.redetect_s * 1e9)
        self.hold = params.hold
        self.max_misses = params.max_misses
        self.scale = params.scale
        scheduled = scheduled or background
        self.detect_delay_ns = int(params.detect_delay_s * 1e9) if scheduled else 0
        self.frame_ns = params.frame_ns
        self.crop: Crop | None = None
        self.version = 0
        self._geometry: Geometry | None = None  # the current crop's square
        self._eyes: deque = deque(maxlen=5)  # eye geometries of the last detections
        self._searched_ns: int | None = None  # media time of the last search's frame
        self._frames = 0
        self._misses = 0
        # detection in a worker thread (OpenCV releases the GIL): frames go on with the
        # current crop meanwhile, and a new one takes effect when the search is due
        self._pool = (
            # at the process's own priority: the frame a search is due at waits for it, so
            # a search starved by a lowered priority (nice +10 got a tenth of a busy core)
            # stalled the whole stream; a busy box ran its spot stage at a third of real time
            ThreadPoolExecutor(1, "mfvan-detect") if background else None
        )
        self._pending: _Pending | None = None  # a detection under way

    def _propose(self, box: Box, eyes):
        """The crop geometry this detection suggests, or None to keep the current one."""
        if eyes is None:
            cx, cy = box.centre
            fallback = Geometry(cx, cy, self.scale * max(box.w, box.h), 0.0)
            if self._geometry is None:
                return fallback, False
            g = self._geometry
            far = max(abs(cx - g.cx), abs(cy - g.cy)) > 0.25 * g.side
            return (fallback, False) if far else None
        geometry = eye_geometry(eyes)
        if self._eyes and abs(geometry.side / np.median([e.side for e in self._eyes]) - 1) > 0.15:
            return None  # an implausible pair for this face (a brow or a nostril)
        self._eyes.append(geometry)
        return Geometry(*np.median(np.asarray(self._eyes), axis=0)), True

    def _moved(self, proposal) -> bool:
        cx, cy, side, angle = self._geometry
        tol = self.hold * side
        return (
            abs(proposal.cx - cx) > tol
            or abs(proposal.cy - cy) > tol
            or abs(proposal.side - side) > tol
            or abs(proposal.angle - angle) > 2.0
        )

    @property
    def geometry(self) -> Geometry | None:
        """The current crop's square in the frame (None without a face)."""
        return self._geometry

    def _near(self) -> Box | None:
        """The current face as a box, where re-detection searches (None: the whole frame)."""
        if self._geometry is None:
            return None
        cx, cy, side, _ = self._geometry
        return Box(cx - side / 2, cy - side / 2, side, side)

    def update(self, image: np.ndarray, t_ns: int | None = None) -> Crop | None:
        """The crop for this frame (media time `t_ns`), or None while no face is found."""
        if t_ns is None:
            t_ns = self._frames * self.frame_ns
        self._frames += 1
        if self._pending is not None and t_ns >= self._pending.due_ns:
            self._settle(self._pending.future.result())
            self._pending = None
        due = self._searched_ns is None or t_ns - self._searched_ns >= self.redetect_ns
        if (self.crop is None or due) and self._pending is None:
            self._searched_ns = t_ns
            if self._pool is not None:
                future = self._pool.submit(self._search, np.array(image), self._near())
                self._pending = _Pending(future, t_ns + self.detect_delay_ns)
            elif self.detect_delay_ns:
                future: Future = Future()
                future.set_result(self._search(image, self._near()))
                self._pending = _Pending(future, t_ns + self.detect_delay_ns)
            else:
                self._settle(self._search(image, self._near()))
        return self.crop

    def restart_clock(self) -> None:
        """The stream's media time jumped (a camera restarted, two recordings joined): a
        detection under way takes effect now, and the next frame is searched, instead of
        waiting for a media time the new clock may not reach for hours. The crop and the
        face's track are kept."""
        if self._pending is not None:
            self._settle(self._pending.future.result())
            self._pending = None
        self._searched_ns = None

    def _search(self, image: np.ndarray, near: Box | None):
        """(face box, eyes or None), or None without a face (in the worker thread when
        detecting in the background)."""
        box = self.detector.detect(image, near=near)
        if box is None and near is not None:  # it moved further: search everywhere
            box = self.detector.detect(image)
        return None if box is None else (box, self.detector.eyes(image, box))

    def _settle(self, found) -> None:
        """Take a detection's result: a new crop, the same one, or the face lost."""
        if found is None:
            self._misses += 1
            if self.crop is None or self._misses >= self.max_misses:
                self.crop = self._geometry = None  # lost: detect again next frame
                self._eyes.clear()
            return
        self._misses = 0
        proposed = self._propose(*found)
        if proposed is None:
            return
        proposal, aligned = proposed
        if self._geometry is None or self._moved(proposal):
            self._geometry = proposal
            self.crop = crop_at(*proposal, self.size, aligned)
            self.version += 1
