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

import numpy as np

from .faces import FaceDetector, FaceTracker, to_grey
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


def decoded_grey(frame) -> np.ndarray:
    """A decoded PyAV video frame as uint8 grey: its luma plane, as the decoder gives it
    (no colour math on the frame path). With `faces.to_grey` (for RGB arrays), the one
    grey conversion of the live stage, `mfvan spot-eval` and the benchmarks."""
    return frame.to_ndarray(format="gray")


def media_time_ns(frame, start_pts: int | None, previous_ns: int | None, rate) -> int:
    """A decoded PyAV frame's presentation time in ns after `start_pts` (the first frame's
    pts); a frame without a pts is one frame period (1 / `rate`) after the previous one."""
    if frame.pts is None or frame.time_base is None or start_pts is None:
        period = int(1e9 / float(rate)) if rate else 0
        return 0 if previous_ns is None else previous_ns + period
    return int((frame.pts - start_pts) * frame.time_base * 1_000_000_000)


class FaceSpotter:
    """`push(image, index, t_media_ns)` -> the intervals that frame confirmed.

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
    ):
        # the same detection schedule with or without the worker thread: offline = live
        self.tracker = FaceTracker(detector, size=size, background=background, scheduled=True)
        self.spotter = Spotter(params, flow_fn=flow_fn)
        self.has_face = False
        self.crop = None  # the latest aligned grey crop (uint8), or None without a face
        self.spot_seconds = 0.0  # the spotter's share of the last push (for benchmarks)

    def push(self, image, index: int, t_media_ns: int, key_frame: bool = False) -> list[Interval]:
        """One decoded frame (grey or RGB uint8), its index and media time in ns.
        `key_frame`: the frame starts a GOP (`GopBoundaries`)."""
        grey = to_grey(image)
        crop = self.tracker.update(grey, t_media_ns)
        self.has_face = crop is not None
        if crop is None:
            self.crop = None
            self.spotter.reset()
            return []
        self.crop = crop.apply(grey)
        started = time.perf_counter()
        found = self.spotter.push(
            self.crop, index, t_media_ns, self.tracker.version, key_frame=key_frame
        )
        self.spot_seconds = time.perf_counter() - started
        return found

    @property
    def rejected(self) -> dict[str, int]:
        return self.spotter.rejected

    @property
    def last_signal(self) -> float:
        return self.spotter.last_signal if self.has_face else float("nan")

    def threshold(self) -> float:
        return self.spotter.threshold() if self.has_face else float("nan")
