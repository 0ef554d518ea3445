"""One stream's path from frame to spots: grey frame -> tracked, aligned crop -> spotter ->
intervals and rejections. The live spot stage (`mfvan.stream.stages.SpotStage`), offline
evaluation (`mfvan spot-eval`), `mfvan bench spotter` and the tests all call this one
object, so what the evaluation measures is what the live pipeline does.

Time is media time: each frame's presentation time (PTS x time base from a file, the RTP
clock from RTSP, the synthetic clock from `synth://`), never the moment it was decoded, so
a file gives the same intervals at any CPU load and at any replay speed. The tracker's
re-detection schedule runs on the same clock (`faces.FaceTracker`).

Grey conversion happens here and nowhere else on the frame path: a grey frame (the
decoder's luma plane, as ingest sends by default) is used as it is, an RGB one goes
through `cv2.cvtColor`.

Imports nothing of this project outside `mfvan.kernels`.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from .faces import FaceDetector, FaceTracker, TrackerParams, to_grey
from .spotter import Interval, Spotter, SpotterParams


class GopBoundaries:
    """Which decoded frames start a GOP: call it on each PyAV frame in order. A key frame
    starts one only in a stream of predicted pictures (H.264, H.265 from a camera), where
    the pictures up to the next key frame are coded from it and share its codec noise. In an
    intra-only codec every picture stands alone, and the key-frame flag marks something
    else: FFV1 sets it every 12 frames by default, where its range coder's contexts reset.
    So a key frame counts once the stream has shown a P or B picture."""

    _INTRA = (0, 1)  # PyAV's pict_type: AV_PICTURE_TYPE_NONE, AV_PICTURE_TYPE_I

    def __init__(self):
        self.predicted = False  # a P or B picture was seen

    def __call__(self, frame) -> bool:
        if int(frame.pict_type) not in self._INTRA:  # an int or an enum, by PyAV version
            self.predicted = True
        return bool(frame.key_frame) and self.predicted


# Pixel formats whose first plane is the luma (Y) plane, 8 bits a sample: what H.264 and
# H.265 decoders give (yuv420p; yuvj420p from MJPEG and many IP cameras; nv12 from hardware
# decoders), and grey itself
LUMA_FIRST = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
)
_FULL_RANGE_FORMATS = frozenset({"yuvj420p", "yuvj422p", "yuvj444p", "gray"})
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG: full-range samples, 0-255
# limited ("MPEG", 16-235) luma to full range, as FFmpeg's own conversion to grey rounds it
LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


def limited_to_full(luma: np.ndarray) -> np.ndarray:
    """`LIMITED_TO_FULL` applied to every sample, in two saturating SIMD passes of OpenCV's
    (y - 16, clipped at 0, times 255 / 219, rounded and clipped at 255): the same 256
    values as the table (`test_ingest`; (y - 16) * 255 / 219 is never within 0.002 of a
    half), in 0.11 ms for 640 x 480 on one core, where `cv2.LUT` took 0.26-0.4 ms, a third
    of a 200 fps camera's whole ingest."""
    return cv2.convertScaleAbs(cv2.subtract(luma, 16), alpha=255 / 219)


def luma_plane(frame) -> np.ndarray:
    """The luma plane of a decoded PyAV frame of a `LUMA_FIRST` format, as a uint8 (H, W)
    NumPy view of the decoder's own memory: no copy, no conversion. The rows of a plane are
    `line_size` bytes apart (padded for SIMD, e.g. 640 for a 632-wide picture), so the view
    is cut to the width and is not C-contiguous when there is padding."""
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def decoded_grey(frame) -> np.ndarray:
    """A decoded PyAV video frame as uint8 grey, the same pixels as FFmpeg's conversion
    (`frame.to_ndarray(format="gray")`) at a fraction of its cost. For the formats cameras
    send (`LUMA_FIRST`) it is the luma plane itself (full-range formats, a view without a
    copy) or that plane through one 256-entry table (limited-range video, whose 16-235 luma
    FFmpeg stretches to 0-255: `limited_to_full`, about 0.1 ms for 640 x 480, against swscale's
    0.5-5 ms); any other format (RGB from FFV1, 10-bit video) goes through FFmpeg once.
    With `faces.to_grey` (for RGB arrays), the one grey conversion of the live stage,
    `mfvan spot-eval` and the benchmarks."""
    name = frame.format.name
    if name not in LUMA_FIRST:
        return frame.to_ndarray(format="gray")
    luma = luma_plane(frame)
    if name in _FULL_RANGE_FORMATS or int(frame.color_range) == _JPEG_RANGE:
        return luma
    return limited_to_full(luma)


def media_time_ns(frame, start_pts: int | None, previous_ns: int | None, rate) -> int:
    """A decoded PyAV frame's presentation time in ns after `start_pts` (the first frame's
    pts); a frame without a pts is one frame period (1 / `rate`) after the previous one."""
    if frame.pts is None or frame.time_base is None or start_pts is None:
        period = int(1e9 / float(rate)) if rate else 0
        return 0 if previous_ns is None else previous_ns + period
    return int((frame.pts - start_pts) * frame.time_base * 1_000_000_000)


MAX_STEP_NS = 5_000_000_000  # media time forward past this between two frames is a jump


class FaceSpotter:
    """`push(image, index, t_media_ns)` -> the intervals that frame confirmed.

    Every face in view (up to `max_faces`, `faces.FaceTracker`) has its own spotter, fed its
    own aligned crop; an interval carries its face's track id (`Interval.face`). A face that
    leaves takes its spotter's state with it; one that comes back with its id (a short
    occlusion) starts its spotter again (windows empty, noise estimate kept). With one face
    (the default) this is the one-face path that every spotting figure was measured on.

    Media time that jumps (back at all, or forward by more than `MAX_STEP_NS`: a camera
    that restarted, two recordings joined, a clock stepped) starts the time-dependent
    state again: the tracker's search schedule and the spotters' windows (their noise
    estimates are kept), so nothing waits for a media time the new clock will not reach;
    `clock_jumps` counts them and `jumped` says the last frame came after one. What was
    under way at the jump is lost; what follows is spotted after the spotter's warm-up.

    `background`: face detection in a worker thread (the live stage), with results taking
    effect on a media-time schedule, so the intervals are the same as without it.
    `flow_fn` replaces the spotter's dense flow (benchmarks compare OpenCV's).
    """

    def __init__(
        self,
        params: SpotterParams | None = None,
        size: int = 128,
        background: bool = False,
        detector: FaceDetector | None = None,
        flow_fn=None,
        max_faces: int = 1,
    ):
        # the same detection schedule with or without the worker thread: offline = live
        self.tracker = FaceTracker(
            detector,
            size=size,
            params=TrackerParams(max_faces=max_faces),
            background=background,
            scheduled=True,
        )
        self.params, self.flow_fn = params, flow_fn
        self.spotters: dict[int, Spotter] = {}  # a face's track id -> its spotter
        self.crops: dict[int, np.ndarray] = {}  # -> its latest aligned grey crop (uint8)
        self.spot_seconds = 0.0  # the spotters' share of the last push (for benchmarks)
        self.clock_jumps = 0  # times the media time jumped (see `push`)
        self.jumped = False  # whether the last frame came after a jump
        self._last_ns: int | None = None
        self._rejected_gone: dict[str, int] = {}  # what forgotten faces' spotters refused
        self._first = Spotter(params, flow_fn=flow_fn)  # the first face's, before any face

    @property
    def spotter(self) -> Spotter:
        """The first face's spotter (the oldest face in view; the one face's, with one)."""
        return next(iter(self.spotters.values()), self._first)

    @property
    def has_face(self) -> bool:
        return bool(self.crops)

    @property
    def crop(self) -> np.ndarray | None:
        """The first face's latest aligned grey crop (uint8), or None without a face."""
        return next(iter(self.crops.values()), None)

    def push(self, image, index: int, t_media_ns: int, key_frame: bool = False) -> list[Interval]:
        """One decoded frame (grey or RGB uint8), its index and media time in ns.
        `key_frame`: the frame starts a GOP (`GopBoundaries`)."""
        grey = to_grey(image)
        last, self._last_ns = self._last_ns, t_media_ns
        self.jumped = last is not None and not 0 <= t_media_ns - last <= MAX_STEP_NS
        if self.jumped:  # back, or forward past any gap a stream has: a new clock
            self.clock_jumps += 1
            self.tracker.restart_clock()
            for spotter in self.spotters.values():
                spotter.reset()
        self.tracker.update(grey, t_media_ns)
        in_view = self.tracker.in_view
        self._forget({t.id for t in in_view})
        self.crops = {}
        found: list[Interval] = []
        started = time.perf_counter()
        for track in in_view:
            spotter = self.spotters.get(track.id)
            if spotter is None:
                spotter = self.spotters[track.id] = self._spotter_for(track.id)
            crop = self.crops[track.id] = track.crop.apply(grey)
            for it in spotter.push(crop, index, t_media_ns, track.version, key_frame=key_frame):
                it.face = track.id
                found.append(it)
        self.spot_seconds = time.perf_counter() - started
        return found

    def _spotter_for(self, face: int) -> Spotter:
        """A face's spotter: a new one, or the one-face path's (kept across a loss)."""
        if self.tracker.max_faces == 1:
            return self._first
        return Spotter(self.params, flow_fn=self.flow_fn)

    def _forget(self, in_view: set[int]) -> None:
        """Spotters of faces out of view start again (a face that was lost, even for a
        frame, has a gap in its frames); those of faces the tracker forgot are dropped."""
        keep = in_view | {t.id for t in self.tracker.lost}
        for face in list(self.spotters):
            if face not in in_view:
                self.spotters[face].reset()
            if face not in keep:
                gone = self.spotters.pop(face)
                if gone is not self._first:
                    for reason, n in gone.rejected.items():
                        self._rejected_gone[reason] = self._rejected_gone.get(reason, 0) + n

    def face_box(self, face: int | None = None) -> list[float] | None:
        """[x, y, w, h] in frame pixels (1 decimal) of the square a face's crop is cut from
        (before its rotation, if the eyes were not level): face `face` (a track id), or
        the first face in view; None without that face."""
        tracks = self.tracker.in_view
        track = next((t for t in tracks if face is None or t.id == face), None)
        if track is None:
            return None
        g = track.geometry
        return [round(float(v), 1) for v in (g.cx - g.side / 2, g.cy - g.side / 2, g.side, g.side)]

    def tracked(self) -> set[int]:
        """The ids of the faces in view and of those lost for a moment (whose ids come back
        if they do)."""
        return {t.id for t in self.tracker.tracks} | {t.id for t in self.tracker.lost}

    def faces(self) -> list[tuple[int, list[float]]]:
        """Every face in view: (track id, its square as `face_box` gives it)."""
        return [(t.id, self.face_box(t.id)) for t in self.tracker.in_view]

    @property
    def rejected(self) -> dict[str, int]:
        """What the spotters refused, by reason, over every face since the start."""
        out = dict(self._rejected_gone)
        for spotter in {id(s): s for s in [*self.spotters.values(), self._first]}.values():
            for reason, n in spotter.rejected.items():
                out[reason] = out.get(reason, 0) + n
        return out

    @property
    def last_signal(self) -> float:
        return self.spotter.last_signal if self.has_face else float("nan")

    def threshold(self) -> float:
        return self.spotter.threshold() if self.has_face else float("nan")
