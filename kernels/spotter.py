"""The online micro-expression spotter: aligned face crops in, (onset, apex, offset)
intervals out, one stream at a time, in bounded memory and time.

The method follows the MEGC spotting baselines (ROI optical flow against a frame a fixed
time back, Li et al. 2019, He et al. 2020; main-directional motion, Liu et al. 2016).
What each step was measured to do, and what was tried and not kept, is in
docs/spotting.md, "Design notes"; the steps are numbered alike there.

1. Signal. Each crop is compared with the crop `lag_s` (0.4 s) before it, the reference:
   longer than a micro-expression's rise, so up to the apex the reference is the face at
   rest and the signal is the expression's own displacement. The head's rigid motion
   between them is fitted (`signals.rigid_motion`) and undone half on each side (e), the
   dense flow of what is left is taken (`flow.dense_flow`), and each facial region's
   main-direction motion is measured (`signals.roi_stats`), in px of a 128 px crop.
   a. Denoising: crops are averaged over `denoise_s`, the reference over `reference_s`
      more, so sensor and codec noise, new in every frame, averages out.
   b. Each region is measured above its own resting floor, one per codec state (within
      a GOP, across a key frame), and scaled down where it is noisier than a typical one.
   c. The regions' motion is averaged over `smooth_s`, so the apex is where it peaks.
   d. Blinks: while the eyes move, regions next to (or far from) them are left out, and
      in a blink the regions are measured again with the eyes held still.
   e. Symmetric compensation: both images are moved half the head's motion.
   f. Texture confidence: each pixel's flow counts by how well texture pins it down.
   g. A stream's start: the first frame is the reference until `lag_s` has passed;
      running estimates are plain means until their window fills.
   h. A GOP's start is treated as a stream's (`gop_reference`): frames after a key frame
      are compared with frames after it, the same codec state on both sides.
   i. The signal is measured at most `measure_hz` times a second of media time.
   j. Never across a key frame (`gop_bridge`, off: measured worse, docs/spotting.md): a
      comparison whose reference and frame lie in different GOPs is chained from
      comparisons within each GOP; frames whose averages straddle a key frame are not
      measured.
2. Echo. `lag_s` later the expression is in the reference and shows again, mirrored: no
   interval starts on a reference inside an interval already seen; (a) a reference near
   a marked blink is not used, the frame before the blink is.
3. Threshold, per stream: a running mean and mean absolute deviation of the signal at
   rest; an interval starts `z` deviations (at least `min_amplitude`) above the mean.
4. Apex and edges. The apex is the signal's maximum, confirmed when the signal falls
   `confirm_fraction` of the way back; the interval is emitted then. Onset and offset are
   where a smooth (half-cosine) rise and fall through what was seen start and end.
5. Refused: too long or too large (macro-expressions, drift: their echo is blocked and
   they are waited out); (a) blips shorter than `min_duration_s`; (b) blinks, by the eyes'
   motion at the apex; (c) echoes, by one more flow from before the onset to the apex.
6. The pair. An interval carries the crops the recognizer classifies, from the spotter's
   own averaging (`denoised_pairs`): the onset's is the reference the spotter would use
   there (the face at rest), the apex's the denoised crop centred on the apex.

Parameters are in seconds and in px of a 128 px crop, never in frames, so the same
settings work from 30 to 200 fps. Memory per stream is the crops of the last `lag_s +
max_duration_s` plus a few numbers, whatever the stream's length.

Imports nothing of this project.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import deque
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

import cv2
import numpy as np

from . import flow as _flow
from . import signals as _signals

REJECTIONS = ("macro", "long", "blink", "short", "echo")  # `Spotter.rejected`'s reasons


class _Frame(NamedTuple):
    """A buffered frame."""

    index: int
    ns: int  # media time
    crop: np.ndarray  # uint8, as tracked (what a pair carries)
    image: np.ndarray  # float32, denoised (step 1a)
    key_frame: bool
    first_ns: int  # the oldest frame averaged into `image` (step 1a)


class _Sample(NamedTuple):
    """A frame's spotting signal, kept for the onset search."""

    index: int
    ns: int
    signal: float


class _Span(NamedTuple):
    """Media time of an interval seen, its margins included (step 2)."""

    start_ns: int
    end_ns: int


@dataclass
class _Key:
    """A key frame among predicted pictures, and the frames that bridge it (step 1j)."""

    ns: int
    before: _Frame  # the newest frame before it (its denoising window wholly before it)
    after: _Frame | None = None  # the first frame whose denoising window starts at it


class _Sum(NamedTuple):
    """The running sum of the reference's window of denoised crops (step 1a)."""

    first_ns: int
    last_ns: int
    total: np.ndarray  # float64


@dataclass(frozen=True)
class SpotterParams:
    lag_s: float = 0.4  # the reference frame is this far back
    noise_window_s: float = 2.0  # time constant of the running noise estimate
    warmup_s: float = 0.3  # signal seen before the first interval can start (step 1g)
    min_lag_s: float = 0.1  # a stream's first lag_s: its first frame is the reference (1g)
    fast_start: bool = True  # running estimates: plain means until their window fills (1g)
    z: float = 6.0  # start threshold, in deviations above the running mean
    z_quiet: float = 2.0  # below this the face is at rest (onset search, noise update)
    settle_holds_noise: bool = False  # no noise update while a large motion settles (3)
    min_amplitude: float = 0.05  # px (128 px crop) above the running mean, at least
    max_amplitude: float = 0.8  # px: above this it is a macro-expression
    min_duration_s: float = 0.06  # above the start threshold to confirmation, at least
    max_duration_s: float = 0.5  # onset to confirmation (and offset) at most this long
    confirm_fraction: float = 0.5  # the apex is confirmed when the signal falls below this
    edge_fraction: float = 0.2  # onset and offset: this far up from the mean to the peak
    block_margin_s: float = 0.1  # an echo's reference this close to a seen interval: ignored
    blink_ratio: float = 1.5  # eyes' motion above this times a region next to them: a blink
    blink_far_ratio: float = 5.0  # ... times a region far from them (mouth, chin)
    blink_px: float = 0.35  # eyes' motion above this (px, 128 px crop): a blink, step 2a
    blink_margin_s: float = 0.1  # a reference this close to a blink is not used
    verify_fraction: float = 0.3  # onset-to-apex motion at least this part of the rise
    verify_s: float = 0.2  # ... measured from the onset or this long before the apex
    region_floors: bool = True  # each region measured against its own noise floor
    denoise_s: float = 0.02  # crops averaged over this much media time before the flow
    reference_s: float = 0.05  # the reference: denoised crops averaged over this much time
    smooth_s: float = 0.025  # regions' motion averaged over this much media time
    still_eyes_px: float = 0.35  # eyes moving more than this: regions measured eyes held still
    confidence: bool = True  # each pixel's flow weighted by the reference's texture (1f)
    gop_reference: bool = True  # a key frame restarts the reference, as a stream's start (1h)
    gop_bridge: bool = False  # comparisons across a key frame chained within GOPs (1j)
    bridge_ratio: float = 4.0  # ... a key frame whose picture changes this times a P-frame's
    measure_hz: float = 100.0  # the signal is measured at most this often (1i; 0: every frame)
    denoised_pairs: bool = True  # a pair's crops from the denoised frames (step 6), not raw
    flow: _flow.FlowParams = field(default_factory=_flow.FlowParams)


@dataclass
class Interval:
    """One spotted micro-expression. Frame indices are the stream's; times its timestamps."""

    onset: int
    apex: int
    offset: int  # estimated at emission (see the module's step 4)
    onset_ns: int
    apex_ns: int
    offset_ns: int
    score: float  # peak signal / start threshold
    amplitude: float  # peak signal, px of a 128 px crop
    region: str  # the region that moved most at the apex
    emitted: int  # frame index at which the interval was emitted
    latency_frames: int  # emitted - apex
    latency_ns: int
    onset_crop: np.ndarray  # the crops to classify (uint8; denoised, step 6)
    apex_crop: np.ndarray
    face: int = 1  # the face's track id (`faces.FaceTracker`; 1: a stream's first face)


class State(enum.Enum):
    """The spotter's state between frames (its state machine; step numbers as above)."""

    IDLE = "idle"  # no interval open: a rise over the start threshold opens one
    OPEN = "open"  # an interval is open (`Spotter._candidate`): its peak is followed
    # after an interval or a refused large motion: until the signal falls to rest
    SETTLING = "settling"
    # after a refused blip, blink or echo: until the signal falls below the start threshold
    RECOVERING = "recovering"


class _Now(NamedTuple):
    """One measured frame, as the state machine sees it."""

    index: int
    ns: int
    signal: float  # the normalised signal (step 1b)
    region: int  # the region that moved most
    eyes: float  # the eyes' motion, px (0 when measured with the eyes held still, 1d)
    main: np.ndarray  # each region's motion, px


@dataclass
class _Candidate:
    onset: int
    onset_ns: int
    apex: int
    apex_ns: int
    peak: float
    threshold: float
    region: int
    eyes_at_peak: float
    peak_px: float  # the region's own motion at the peak, px
    floor_px: float  # the region's resting level when the interval started
    delay_ns: int = 0  # how late the averaged signal was at the peak (step 1c)


class Spotter:
    """Feed crops with `push`; it returns the intervals confirmed by that crop (usually
    none). `rejected` counts what it refused, by reason."""

    def __init__(self, params: SpotterParams | None = None, flow_fn=None):
        """`flow_fn(first, second) -> (H, W, 2)` replaces our dense flow (benchmarks use it
        to run the same spotter on OpenCV's flow)."""
        self.params = params or SpotterParams()
        self._flow_fn = flow_fn or (lambda a, b: _flow.dense_flow(a, b, self.params.flow))
        self.rejected = dict.fromkeys(REJECTIONS, 0)
        self.frames = 0
        self.last_signal = float("nan")  # the latest frame's signal (for traces)
        self._size = None
        self._version = None
        self._buffer: deque[_Frame] = deque()  # the recent frames
        self._keys = 0  # key frames in the buffer
        self._ref_sum: _Sum | None = None  # the reference's running sum (`_reference_image`)
        self._last_key_ns = 0  # the newest key frame's time
        self._key_frames: deque[_Key] = deque()  # the key frames kept, bridged (step 1j)
        self._last_crop = None  # the previous crop, float32 (a key frame's step, 1j)
        self._p_change = None  # a predicted picture's mean change, running mean (1j)
        self._blocked: deque[_Span] = deque()  # intervals seen (with their margins)
        self._blinks: deque = deque()  # ns of the frames whose eyes blinked (step 2a)
        self._mean = None
        self._dev = 0.0
        self._seen_ns = 0
        self._count = 0  # samples in the noise estimate (step 1g)
        self._history: deque[_Sample] = deque()  # the recent frames' signal
        self._prev_ns = 0
        self._large = False  # settling after a refused large motion, not an interval (3)
        self._measured_ns = None  # the last frame that passed the rate gate (1i)
        self._gate_ns = None  # the one before it (a frame at rest's weight, 1b)
        self._settling_since = 0  # when the last interval closed (`State.SETTLING`)
        self._last_ns = None
        self._state = State.IDLE
        self._candidate: _Candidate | None = None  # the open interval (`State.OPEN`)
        self._floors: list = [None, None]  # per GOP state: (mean, dev) per region, samples
        self._tex = None  # (ns, the reference's texture weight), step 1f
        self._recent: deque = deque()  # (ns, float crop) of the denoising window
        self._motions: deque = deque()  # (ns, regions' motion, eyes') of the smoothing window
        self._recent_sum = None

    # -- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the frames (a new crop geometry, or a gap in the stream); the noise
        estimate is kept."""
        self._buffer.clear()
        self._keys = 0
        self._key_frames.clear()
        self._last_crop = None
        self._ref_sum = None
        self._recent.clear()
        self._recent_sum = None
        self._motions.clear()
        self._blocked.clear()
        self._blinks.clear()
        self._history.clear()
        self._candidate = None
        self._state = State.IDLE
        self._tex = None
        self._measured_ns = self._gate_ns = None

    def state_size(self) -> int:
        """Frames held now (bounded by the stream's rate times lag + max duration)."""
        return len(self._buffer) + len(self._blocked) + len(self._history) + len(self._blinks)

    def _setup(self, size: int) -> None:
        self._size = size
        self._floors = [None, None]
        self._scale = 128.0 / size
        names = _signals.SIGNAL_ROIS
        self._signal_boxes = _signals.roi_boxes(size, names)
        self._signal_names = names
        p = self.params
        self._blink_ratios = np.array(
            [p.blink_ratio if n in _signals.NEAR_EYES else p.blink_far_ratio for n in names],
            np.float32,
        )
        self._eye_boxes = _signals.roi_boxes(size, ("eye_left", "eye_right"))
        self._rigid_boxes = _signals.roi_boxes(size, _signals.RIGID)
        self._eye_weight = _eye_weight(size, self._eye_boxes)
        # the head's brightness gain is measured without the eyes (a blink changes theirs)
        self._gain_weight = 1 - _eye_weight(size, self._eye_boxes, 0.03, 0.04)

    # -- the work -------------------------------------------------------------------------
    def push(
        self,
        crop: np.ndarray,
        index: int,
        timestamp_ns: int,
        version: int = 0,
        key_frame: bool = False,
    ):
        """One aligned grey crop (square uint8 or float), its frame index and media time.
        `version` changes when the crop geometry changes (`faces.FaceTracker.version`):
        crops of different geometry are never compared. `key_frame`: the decoder marked the
        frame as intra-coded (a GOP boundary). Returns a list of `Interval`."""
        if crop.ndim != 2 or crop.shape[0] != crop.shape[1]:
            raise ValueError(f"Spotter.push needs a square 2-D grey crop, got {crop.shape}")
        if self._size != crop.shape[0]:
            self._setup(crop.shape[0])
            self.reset()
        if version != self._version or (
            self._last_ns is not None and timestamp_ns <= self._last_ns
        ):
            self._version = version
            self.reset()
        self._last_ns = timestamp_ns
        self.frames += 1
        p = self.params
        lag_ns = int(p.lag_s * 1e9)
        raw = np.asarray(crop, dtype=np.float32)
        image = self._denoised(raw, timestamp_ns)
        self._remember(_Frame(index, timestamp_ns, crop, image, key_frame, self._recent[0][0]), raw)
        keys = self._key_frames
        keep_ns = int((p.lag_s + p.max_duration_s) * 1e9) + lag_ns // 4
        while self._buffer and self._buffer[0].ns < timestamp_ns - keep_ns:
            self._keys -= self._buffer.popleft().key_frame
        while keys and keys[0].ns < self._buffer[0].ns:
            keys.popleft()
        while self._blocked and self._blocked[0].end_ns < timestamp_ns - keep_ns:
            self._blocked.popleft()
        while self._history and self._history[0].ns < timestamp_ns - keep_ns:
            self._history.popleft()
        while self._blinks and self._blinks[0] < timestamp_ns - keep_ns:
            self._blinks.popleft()
        if p.gop_bridge and keys and keys[-1].after is None and self._has_gops():
            return []  # the frame's denoising window straddles a key frame (step 1j)
        if (
            p.measure_hz
            and self._measured_ns is not None
            and timestamp_ns - self._measured_ns < 0.75e9 / p.measure_hz
        ):
            return []  # kept, not measured (step 1i)
        self._gate_ns, self._measured_ns = self._measured_ns, timestamp_ns
        reference, clear = self._reference_open(timestamp_ns - lag_ns)
        if reference is None and timestamp_ns - self._buffer[0].ns >= p.min_lag_s * 1e9:
            # the stream's (or the segment's) first lag_s: its first frame (step 1g)
            reference, clear = self._buffer[0], True
        if p.gop_reference and self._candidate is None:
            own = self._gop_reference(timestamp_ns)
            if own is not None and (reference is None or own.ns > reference.ns):
                reference, clear = own, True
        if reference is None:
            self.last_signal = float("nan")
            return []
        reference, bridges = self._bridges(reference, timestamp_ns)
        ref_ns, ref_image = reference.ns, self._reference_image(reference.ns)
        main, eyes, still = self._measure(ref_image, image, bridges)
        main, eyes = self._smoothed(main, eyes, timestamp_ns)
        if clear and eyes > p.blink_px:
            self._blinks.append(timestamp_ns)
        gop = self._gop_state(ref_ns)
        # regions measured with the eyes held still (step 1d) have no blink in them
        seen = 0.0 if still else eyes
        signal, region = self._normalise(main, gop, seen)
        self.last_signal = signal
        trusted = not any(a <= ref_ns <= b for a, b in self._blocked)
        found = self._step(_Now(index, timestamp_ns, signal, region, seen, main), trusted)
        if self._candidate is None and signal <= self._thresholds()[0]:
            self._update_floors(main, gop, timestamp_ns)
        return found

    def _remember(self, frame: _Frame, raw: np.ndarray) -> None:
        """Buffer the frame; count its key frame, and keep it to bridge (step 1j) when it
        re-codes the texture."""
        stepped = self._key_step(raw, frame.key_frame)
        if frame.key_frame:
            self._keys += 1
            self._last_key_ns = frame.ns
            if self._buffer and stepped:
                self._key_frames.append(_Key(frame.ns, self._buffer[-1]))
        keys = self._key_frames
        if keys and keys[-1].after is None and frame.first_ns >= keys[-1].ns:
            keys[-1].after = frame  # its denoising window lies wholly after the key frame
        self._buffer.append(frame)

    def _key_step(self, raw: np.ndarray, key_frame: bool) -> bool:
        """Whether a key frame re-codes the face's texture beyond a predicted picture's
        change (step 1j): its mean absolute change from the crop before it over
        `bridge_ratio` times the running mean of the predicted pictures'. At 200 fps a
        predicted picture of a face at rest changes by 0.1 grey levels and a key frame by
        3.8 (H.264 CRF 23); at 30 fps by 1.6 and 3.5, and there a bridge's two flows are
        noisier than the one across the key frame (`tests/kernels`)."""
        last, self._last_crop = self._last_crop, raw
        if last is None or not self.params.gop_bridge:
            return False
        change = float(cv2.absdiff(raw, last).mean())
        if key_frame:
            return self._p_change is not None and change > self.params.bridge_ratio * self._p_change
        rate = 0.05 if self._p_change is not None else 1.0
        self._p_change = (
            change if self._p_change is None else self._p_change + rate * (change - self._p_change)
        )
        return False

    def _denoised(self, image: np.ndarray, ns: int) -> np.ndarray:
        """The mean of the crops of the last `denoise_s` of media time (step 1a): sensor
        and codec noise that changes from frame to frame averages out, a micro-expression
        (40 ms or more to its apex) barely blurs. At 30 fps it is the crop itself."""
        window = self._recent
        window.append((ns, image))
        self._recent_sum = image.copy() if self._recent_sum is None else self._recent_sum + image
        while len(window) > 1 and window[0][0] <= ns - self.params.denoise_s * 1e9:
            self._recent_sum -= window.popleft()[1]
        return np.ascontiguousarray(self._recent_sum / np.float32(len(window)))

    def _smoothed(self, main: np.ndarray, eyes: float, ns: int):
        """Each region's motion and the eyes', averaged over the last `smooth_s` of media
        time (step 1c): a peak is where the motion is, not where one frame's noise topped
        it, and the fall after it is the expression's, not the noise's."""
        window = self._motions
        window.append((ns, main, eyes))
        while len(window) > 1 and window[0][0] <= ns - self.params.smooth_s * 1e9:
            window.popleft()
        if len(window) == 1:
            return main, eyes
        # summed in order, as np.mean would (the same bits, without its overhead)
        n = len(window)
        return sum(m for _, m, _ in window) / np.float32(n), sum(e for _, _, e in window) / n

    def _delay_ns(self, ns: int) -> int:
        """How late the averaged signal of the frame at `ns` (the newest) is: half the
        spans of the denoising and smoothing windows (steps 1a, 1c)."""
        return (ns - self._recent[0][0] + ns - self._motions[0][0]) // 2

    def _reference_open(self, at_ns: int):
        """The reference frame for a frame `lag_s` after `at_ns` (step 2a): the newest frame
        at or before `at_ns` not within `blink_margin_s` of a blink, going back at most
        `max_duration_s`. Returns (the buffered frame or None, whether it is clear of
        blinks; when no frame is, or the buffer does not reach back to one, the one at
        `at_ns`)."""
        p = self.params
        margin = int(p.blink_margin_s * 1e9)
        earliest = at_ns - int(p.max_duration_s * 1e9)
        at = at_ns
        while at >= earliest:
            near = self._blinks_near(at)
            if not near:
                found = self._reference(at)
                if found is None:
                    break  # the buffer does not reach back that far (a stream's first second)
                return found, True
            at = min(near) - margin - 1
        return self._reference(at_ns), False

    def _gop_reference(self, ns: int):
        """The first frame of the newest GOP whose denoised and averaged reference lies
        wholly after its key frame, once it is `min_lag_s` old (step 1h); None for a
        stream without GOPs or when a blink is near it."""
        p = self.params
        if not self._has_gops():
            return None
        at = self._last_key_ns + int((p.denoise_s + p.reference_s) * 1e9)
        if ns - at < p.min_lag_s * 1e9:
            return None
        if self._blinks_near(at):
            return None
        return self._reference(at)

    def _blinks_near(self, at: int) -> list:
        """The marked blinks (step 2a) within `blink_margin_s` of `at`."""
        margin = int(self.params.blink_margin_s * 1e9)
        return [b for b in self._blinks if b - margin <= at <= b + margin]

    def _reference_start(self, ns: int) -> _Frame:
        """The oldest buffered frame whose denoised crop `_reference_image(ns)` averages."""
        buffer = self._buffer
        end = bisect.bisect_right(buffer, ns, key=_ns_of)
        return buffer[
            min(
                bisect.bisect_right(buffer, ns - self.params.reference_s * 1e9, key=_ns_of), end - 1
            )
        ]

    def _reference_image(self, ns: int) -> np.ndarray:
        """The mean of the denoised crops of the `reference_s` up to `ns`, the one at `ns`
        (a buffered frame's time) always included (step 1a)."""
        buffer = self._buffer
        end = bisect.bisect_right(buffer, ns, key=_ns_of)
        start = min(
            bisect.bisect_right(buffer, ns - self.params.reference_s * 1e9, key=_ns_of), end - 1
        )
        first, last = buffer[start].ns, buffer[end - 1].ns
        cached = self._ref_sum  # the previous frame's
        if (
            cached is not None
            and buffer[0].ns <= cached.first_ns <= first <= cached.last_ns <= last
        ):
            # the window slid forward: the frames that left it out, the new ones in (in
            # float64 the sums of float32 crops are exact, so nothing accumulates)
            total = cached.total
            for k in range(bisect.bisect_left(buffer, cached.first_ns, key=_ns_of), start):
                total -= buffer[k].image
            for k in range(bisect.bisect_right(buffer, cached.last_ns, key=_ns_of), end):
                total += buffer[k].image
        else:
            total = np.zeros(buffer[start].image.shape, np.float64)
            for k in range(start, end):
                total += buffer[k].image
        self._ref_sum = _Sum(first, last, total)
        return (total / (end - start)).astype(np.float32)

    def _reference(self, at_ns: int):
        """The newest buffered frame at or before `at_ns`, if the buffer reaches back."""
        k = bisect.bisect_right(self._buffer, at_ns, key=_ns_of)
        return self._buffer[k - 1] if k else None

    def _bridges(self, reference: _Frame, ns: int) -> tuple[_Frame, list[_Key]]:
        """The reference to compare the frame at `ns` with, and the key frames between
        them to bridge (step 1j): a comparison across a key frame is chained from the
        reference to the frame before the key frame and from the first frame after it
        (whose denoising window lies wholly after it) to the newest, so that no flow sees
        a key frame's re-coded texture; the face's motion during the key frame's
        denoising window (20 ms; one frame below 50 fps) is left out with it. A reference
        whose averages straddle a key frame (step 1a) is moved back to the frame before
        it. None bridged without `gop_bridge` or GOPs."""
        p = self.params
        if not (p.gop_bridge and self._key_frames and self._has_gops()):
            return reference, []
        oldest = self._reference_start(reference.ns).first_ns
        for key in self._key_frames:
            if oldest < key.ns <= reference.ns:
                reference = key.before
        return reference, [k for k in self._key_frames if reference.ns < k.ns <= ns]

    def _measure(self, ref: np.ndarray, cur: np.ndarray, bridges=()):
        """Each signal region's main-direction motion (px of a 128 px crop) from `ref` to
        `cur`, head motion undone; the eyes' largest; and whether the regions were measured
        with the eyes held still (step 1d). Across the key frames `bridges` (step 1j) the
        flow is the sum of the flows within each GOP."""
        images = [ref]
        for key in bridges:
            images += [key.before.image, key.after.image]
        images.append(cur)
        halves = []
        for first, second in zip(images[::2], images[1::2], strict=True):
            rigid = _signals.rigid_motion(
                first, second, self._rigid_boxes, weight=self._gain_weight
            )
            # each image is moved half the way, so both are resampled alike (step 1e)
            halves.append(_signals.warp_halves(first, second, rigid))
        flows = [self._flow_fn(a, b) for a, b in halves]
        flow = sum(flows[1:], flows[0])  # one pair: its own flow
        eye_stats = _signals.roi_stats(flow, self._eye_boxes)
        eyes = float(np.hypot(eye_stats[:, 1], eye_stats[:, 2]).max()) * self._scale
        still = eyes > self.params.still_eyes_px
        if still:
            # the eyes moved (a blink): the regions are measured again with the eyes
            # held still, the reference's eyes in the frame, so that no motion of theirs
            # reaches the regions through the flow's coarse levels
            w = self._eye_weight
            flows = [self._flow_fn(a, np.ascontiguousarray(b * (1 - w) + a * w)) for a, b in halves]
            flow = sum(flows[1:], flows[0])
        a = halves[0][0]
        texture = self._texture(a) if self.params.confidence else None  # step 1f
        stats = _signals.roi_stats(flow, self._signal_boxes, texture)
        main = np.hypot(stats[:, 1], stats[:, 2]) * self._scale
        return main, eyes, still

    def _texture(self, image: np.ndarray) -> np.ndarray:
        """The texture weight of the reference (`signals.texture_weight`), measured again
        every 0.25 s of media time (the face's texture barely changes in between)."""
        ns = self._last_ns
        if self._tex is None or ns - self._tex[0] > 250_000_000 or ns < self._tex[0]:
            self._tex = (ns, _signals.texture_weight(image))
        return self._tex[1]

    def _gop_state(self, ref_ns: int) -> int:
        """1 when a key frame lies between the reference and the newest frame (coded in
        different GOPs, whose codec noise differs), else 0; always 0 for an intra-only
        stream (FFV1, MJPEG: every frame a key frame) or one without key-frame flags."""
        return int(self._has_gops() and self._last_key_ns > ref_ns)

    def _has_gops(self) -> bool:
        """Whether the frames kept have key frames among predicted pictures (not an
        intra-only stream, nor one without key-frame flags)."""
        return 0 < self._keys <= len(self._buffer) // 2

    def _normalise(self, main: np.ndarray, gop: int, eyes: float) -> tuple[float, int]:
        """The spotting signal: each region's motion above its own resting floor, scaled
        down by the ratio of its noise to a typical region's when it is noisier, then the
        largest region (step 1b of the module's method), leaving out the regions a blink
        reaches while the eyes move more than their ratio times them (step 1d). Until the
        floors exist, the raw largest motion."""
        blinking = eyes > self._blink_ratios * main
        if blinking.all():
            blinking[:] = False
        if not self.params.region_floors or self._floors[gop] is None:
            region = int(np.argmax(np.where(blinking, -np.inf, main)))
            return float(main[region]), region
        mean, dev, _ = self._floors[gop]
        typical = float(_median(dev))
        # noisier regions are scaled down to a typical one; quiet ones are never scaled up
        # (a flat region's codec blocks would be amplified)
        scaled = (main - mean) * np.minimum(1.0, typical / np.maximum(dev, 1e-6))
        region = int(np.argmax(np.where(blinking, -np.inf, scaled)))
        return float(scaled[region] + _median(mean)), region

    def _update_floors(self, main: np.ndarray, gop: int, ns: int) -> None:
        """Each region's resting mean and mean absolute deviation, one pair per GOP state:
        exponential means over `noise_window_s`, of samples clipped at mean + 3 deviations
        (an expression that slipped under the threshold barely moves them)."""
        floors = self._floors[gop]
        # one frame's weight: the time since the frame before (the one measured before,
        # 1i), however long this state was out of use (the other GOP state's frames, an
        # open interval)
        dt = (ns - self._gate_ns) * 1e-9 if self._gate_ns is not None else 0.0
        if floors is None:
            self._floors[gop] = (main.copy(), np.full_like(main, 0.2 * float(main.mean())), 1)
            return
        mean, dev, count = floors
        rate = min(1.0, dt / self.params.noise_window_s)
        if self.params.fast_start:
            rate = max(rate, 1 / (count + 1))  # a plain mean until the window has filled (1g)
        self._floors[gop] = (mean, dev, count + 1)
        x = np.minimum(main, mean + 3 * dev)
        mean += rate * (x - mean)
        dev += rate * (np.abs(x - mean) - dev)

    def threshold(self) -> float:
        """The current start threshold (nan before the noise estimate exists)."""
        return self._thresholds()[0] if self._mean is not None else float("nan")

    def _thresholds(self) -> tuple[float, float]:
        p = self.params
        start = self._mean + max(p.z * self._dev, p.min_amplitude)
        quiet = self._mean + p.z_quiet * self._dev
        return start, min(quiet, start)

    def _update_noise(self, ns: int, signal: float) -> None:
        p = self.params
        if self._mean is None:
            self._mean, self._dev, self._seen_ns, self._count = signal, 0.0, 0, 1
        else:
            dt = max(ns - self._prev_ns, 0)
            self._seen_ns += dt
            # falls fast, rises slowly: a start inside an expression (or a calm face after
            # a long one) must not hold the threshold high for seconds. Until the window
            # has filled, both are the plain mean's weight (step 1g)
            up = min(1.0, dt * 1e-9 / p.noise_window_s)
            down = min(1.0, 8 * up)
            if p.fast_start:
                self._count += 1
                up, down = max(up, 1 / self._count), max(down, 1 / self._count)
            alpha = up if signal > self._mean else down
            self._mean += alpha * (signal - self._mean)
            dev = abs(signal - self._mean)
            self._dev += (up if dev > self._dev else down) * (dev - self._dev)
        self._prev_ns = ns

    def _block(self, start_ns: int, end_ns: int) -> None:
        margin = int(self.params.block_margin_s * 1e9)
        self._blocked.append(_Span(start_ns - margin, end_ns + margin))

    def _step(self, now: _Now, trusted: bool) -> list[Interval]:
        """One measured frame through the state machine (`State`): the interval it
        confirms, if any. `trusted`: its reference is not inside an interval already seen
        (step 2)."""
        p = self.params
        self._history.append(_Sample(now.index, now.ns, now.signal))
        if self._mean is None or self._seen_ns < p.warmup_s * 1e9:
            self._update_noise(now.ns, now.signal)
            return []
        if self._state is not State.OPEN:
            self._wait(now, trusted)
            return []
        return self._follow(now)

    def _wait(self, now: _Now, trusted: bool) -> None:
        """No interval open (step 3): the noise estimate follows the signal, clipped a
        little above the resting level (a Huber-like update: a macro-expression or a long
        head turn barely moves it, while a baseline that really rises is followed,
        slowly). `settle_holds_noise` (off: not settled) holds it while a refused large
        motion settles: a hand over the mouth or a head turn of a second or more settles
        for that long, and its clipped updates, a little above the mean every frame, had
        doubled the start threshold by its end (0.075 to 0.183), which then took a second
        to fall back, over the next micro-expression. `mfvan spot-eval --gestures` (4
        photographic faces, 40 s at 30 fps): 54 of 64 micro-expressions found with
        gestures, 56 with the hold, 62 without gestures either way, 1 false spot in all;
        but on the scenes' faces alone (`--scenes`, two-still, 30 fps) 14 right and 27
        false became 12 and 30. Holding it after accepted intervals too found 57, but with
        8 micro-expressions per 10 s the estimate then learnt too seldom: after two joined
        recordings (`tests/deploy/test_analyze.py`) it found 3 of the second's 6. Issue 39's
        sweep of the matrix decides. A settling state ends when the signal falls to its
        level, or after `max_duration_s` at most; then a rise over the start threshold
        opens an interval."""
        p = self.params
        start, quiet = self._thresholds()
        clip = self._mean + max(p.z_quiet * self._dev, 0.5 * p.min_amplitude)
        if p.settle_holds_noise and self._state is State.SETTLING and self._large:
            self._prev_ns = now.ns  # a motion settling is no noise: the estimate holds
        else:
            self._update_noise(now.ns, min(now.signal, clip))
        if self._state is not State.IDLE:
            level = quiet if self._state is State.SETTLING else start
            if now.signal <= level or now.ns - self._settling_since > p.max_duration_s * 1e9:
                self._state = State.IDLE
        if self._state is not State.IDLE or not trusted or now.signal <= start:
            return
        self._state = State.OPEN
        self._candidate = _Candidate(
            onset=now.index,
            onset_ns=now.ns,
            apex=now.index,
            apex_ns=now.ns,
            peak=now.signal,
            threshold=start,
            region=now.region,
            eyes_at_peak=now.eyes,
            peak_px=float(now.main[now.region]),
            floor_px=self._floor_of(now.region),
            delay_ns=self._delay_ns(now.ns),
        )

    def _follow(self, now: _Now) -> list[Interval]:
        """An interval is open (step 4): follow its peak until the signal falls
        `confirm_fraction` of the way back (or it is refused as too large or too long
        before that), then close it."""
        p, c = self.params, self._candidate
        if now.signal > c.peak:
            c.peak, c.apex, c.apex_ns = now.signal, now.index, now.ns
            c.region, c.eyes_at_peak = now.region, now.eyes
            c.peak_px, c.floor_px = float(now.main[now.region]), self._floor_of(now.region)
            c.delay_ns = self._delay_ns(now.ns)
        rise = c.peak - self._mean
        onset = self._onset(c.apex, self._mean + p.edge_fraction * rise)
        reason = None
        if c.peak > p.max_amplitude:
            # a blink that reached the signal is a blink, however large: it leaves no
            # motion to wait out or echo to ignore (a macro-expression does)
            reason = "blink" if self._is_blink(c) else "macro"
        elif onset is None or (now.ns - onset[1]) * 1e-9 > p.max_duration_s:
            reason = "long"
        if reason is None and now.signal >= self._mean + p.confirm_fraction * rise:
            return []
        self._candidate = None
        self._state, self._settling_since = State.SETTLING, now.ns
        found = self._close(c, onset, now, rise, reason)
        return [] if found is None else [found]

    def _close(self, c: _Candidate, onset, now: _Now, rise: float, reason) -> Interval | None:
        """The closed candidate's interval, or None once it is refused (step 5, `reason`
        when already known) and the refusal counted."""
        offset = None
        if reason is None:
            reason = self._refusal(c, onset, now.ns)
        if reason is None:
            onset, offset = self._extent(c, onset, now, rise)
            # a motion whose whole extent, as estimated, is longer than a micro-expression
            # (a macro-expression's part, a slow drift), with 10% allowed for the estimate
            if (offset[1] - onset[1]) * 1e-9 > 1.1 * self.params.max_duration_s:
                reason = "long"
        if reason is not None:
            self.rejected[reason] += 1
            # only a real motion that was refused leaves an echo to ignore, and is waited
            # out; a blip, a blink (its echo is a blink again) or an echo leave nothing in
            # the reference frames that could fire later
            if reason in ("macro", "long"):
                self._block(onset[1] if onset else c.onset_ns, now.ns)
                self._large = True  # settling after a large motion (step 3)
            else:
                self._state = State.RECOVERING
            return None
        self._block(onset[1], offset[1])
        self._large = False
        return self._interval(c, onset, offset, now)

    def _is_blink(self, c: _Candidate) -> bool:
        """The eyes moved more than the region at the peak (step 5b)."""
        return c.eyes_at_peak > self._blink_ratios[c.region] * c.peak_px

    def _refusal(self, c: _Candidate, onset: tuple[int, int], ns: int) -> str | None:
        """Why a closed candidate is no micro-expression: a blink (5b), a blip (5a), an
        echo (5c); None when it is none of them."""
        p = self.params
        if self._is_blink(c):
            return "blink"
        # temporal consistency: a micro-expression holds its region's motion for tens of
        # ms; sensor noise, a codec's key frame or block flicker flash for a frame or two
        if (ns - c.onset_ns) * 1e-9 < p.min_duration_s:
            return "short"
        # an echo (or a motion that started before the onset) does not hold between a
        # frame before the interval's onset and its apex, in the region's own px above its
        # own floor; a micro-expression does. The frame: the onset as estimated, or
        # `verify_s` before the apex if that is earlier (a faint expression's noisy signal
        # puts the estimated onset late, inside the rise)
        before = self._item_at_ns(min(onset[1], c.apex_ns - int(p.verify_s * 1e9)))
        apex = self._item_at(c.apex)
        before, bridges = self._bridges(before, apex.ns)
        if bridges and (bridges[-1].after is None or apex.ns < bridges[-1].after.ns):
            # the apex's denoising window straddles a key frame (1j): the nearest clean frame
            last = bridges[-1]
            apex = last.before if last.after is None else last.after
            if last.after is None:
                bridges.pop()
        moved = self._measure(before.image, apex.image, bridges)[0]
        if moved[c.region] - c.floor_px < p.verify_fraction * (c.peak_px - c.floor_px):
            return "echo"
        return None

    def _extent(self, c: _Candidate, onset, now: _Now, rise: float):
        """((onset index, ns), (offset index, ns)): where a half-cosine rise and fall
        through the levels seen would start and end (step 4)."""
        p = self.params
        level = min(max((now.signal - self._mean) / rise, 0.0), 0.99)
        back = 1 / (1 - _cosine_time(p.edge_fraction))
        ahead = 1 / (1 - _cosine_time(level))
        first = self._history[0]
        onset = (
            max(c.apex - round((c.apex - onset[0]) * back), first.index),
            max(c.apex_ns - round((c.apex_ns - onset[1]) * back), first.ns),
        )
        offset = (
            c.apex + round((now.index - c.apex) * ahead),
            c.apex_ns + round((now.ns - c.apex_ns) * ahead),
        )
        return onset, offset

    def _interval(self, c: _Candidate, onset, offset, now: _Now) -> Interval:
        """The interval, moved back by how late the averaging windows (steps 1a, 1c) made
        the signal (half their span), to the frame nearest, with its pair (step 6)."""
        apex, apex_ns = self._frame_near(c.apex_ns - c.delay_ns)
        shift, shift_ns = c.apex - apex, c.apex_ns - apex_ns
        return Interval(
            onset=onset[0] - shift,
            apex=apex,
            offset=offset[0] - shift,
            onset_ns=onset[1] - shift_ns,
            apex_ns=apex_ns,
            offset_ns=offset[1] - shift_ns,
            score=c.peak / c.threshold,
            amplitude=c.peak,
            region=self._signal_names[c.region],
            emitted=now.index,
            latency_frames=now.index - apex,
            latency_ns=now.ns - apex_ns,
            onset_crop=self._onset_crop(onset[0] - shift),
            apex_crop=self._apex_crop(apex),
        )

    def _frame_near(self, ns: int) -> tuple[int, int]:
        """(index, ns) of the kept frame whose time is nearest `ns`."""
        index, at = min(((i, t) for i, t, *_ in self._buffer), key=lambda it: abs(it[1] - ns))
        return index, at

    def _floor_of(self, region: int) -> float:
        floors = self._floors[0] if self._floors[0] is not None else self._floors[1]
        return 0.0 if floors is None else float(floors[0][region])

    def _onset(self, apex: int, edge: float):
        """(index, ns) of the last frame before `apex` whose signal was at most `edge`, or
        None when the history holds none (the rise began too long ago)."""
        for index, ns, signal in reversed(self._history):
            if index < apex and signal <= edge:
                return index, ns
        return None

    def _item_at(self, index: int):
        for item in self._buffer:
            if item.index >= index:
                return item
        return self._buffer[-1]

    def _onset_crop(self, index: int) -> np.ndarray:
        """The onset crop a pair carries (step 6): with `denoised_pairs`, the reference the
        spotter would compare with at frame `index` (its denoised crops of `reference_s`
        up to it: the face at rest); otherwise the frame as tracked."""
        item = self._item_at(index)
        if not self.params.denoised_pairs:
            return item.crop
        return _as_crop(self._reference_image(item.ns))

    def _apex_crop(self, index: int) -> np.ndarray:
        """The apex crop a pair carries (step 6): with `denoised_pairs`, the denoised crop
        whose window is centred on frame `index`; otherwise the frame as tracked."""
        item = self._item_at(index)
        if not self.params.denoised_pairs:
            return item.crop
        return _as_crop(self._item_at_ns(item.ns + int(self.params.denoise_s * 1e9 / 2)).image)

    def _item_at_ns(self, ns: int):
        """The newest kept frame at or before `ns` (the oldest kept if none)."""
        return self._reference(ns) or self._buffer[0]


def _as_crop(image: np.ndarray) -> np.ndarray:
    """A float image as a uint8 crop, rounded."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _eye_weight(size: int, boxes: np.ndarray, margin: float = 0.0, ramp: float = 0.02):
    """A (size, size) float32 weight: 1 over the eye boxes grown by `margin`, falling to 0
    over `ramp` (fractions of the crop) around them."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    weight = np.zeros((size, size), np.float32)
    for x0, y0, x1, y1 in boxes:
        dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0) / size - margin
        dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0) / size - margin
        d = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
        weight = np.maximum(weight, np.clip(1 - d / ramp, 0, 1))
    return weight


_ns_of = attrgetter("ns")  # a buffered frame's time


def _median(x: np.ndarray):
    """np.median of a short float32 vector, the same value without its overhead."""
    s = np.sort(x)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / np.float32(2)


def _cosine_time(level: float) -> float:
    """Where, as a fraction of its duration, a half-cosine rise 0 -> 1 reaches `level`."""
    return math.acos(1 - 2 * level) / math.pi


PARTS = ("flow", "signals")  # what `warm_up` can compile apart, in two processes


def warm_up(size: int = 128, part: str | None = None) -> None:
    """Compile (or load from Numba's on-disk cache) what the live spot stage runs, and only
    that: one measurement of a pair of `size` px crops as `Spotter.push` makes it (rigid fit
    with the eyes' weight, dense flow, the eyes held still, the texture weight, the regions'
    statistics with and without it) and one pair's flow (`motion.pair_flow`). Exercising
    the real calls compiles exactly the type signatures they use, which calling each kernel
    with made-up arguments would not.

    `part` compiles one half only: "flow" the dense flow, "signals" the rest (the same
    calls with the flow stubbed out), so that two processes can share a first compile
    (`mfvan warm-up --jobs 2`); each half's signatures are those of the whole."""
    from . import motion

    if part not in (None, *PARTS):
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    rng = np.random.default_rng(0)
    ref = rng.random((size, size), dtype=np.float32) * 255
    if part == "flow":
        _flow.dense_flow(ref, np.roll(ref, 1, axis=1), SpotterParams().flow)
        return
    stub = (lambda a, b: np.zeros((*a.shape, 2), np.float32)) if part == "signals" else None
    spotter = Spotter(flow_fn=stub)
    spotter._setup(size)
    spotter._last_ns = 0
    spotter._measure(ref, np.roll(ref, 1, axis=1))
    eyes = spotter._eye_weight > 0  # move the eyes: the measurement with them held still
    spotter._measure(ref, np.where(eyes, np.roll(ref, 3, axis=0), ref).astype(np.float32))
    if part is None:  # its rigid fit and warp are `_measure`'s signatures, its flow too
        motion.pair_flow(ref.astype(np.uint8), np.roll(ref, 1, axis=0).astype(np.uint8))


def compiled() -> dict:
    """The kernels' state in Numba's cache after a warm-up: {"kernels": dispatchers that
    ran, "loaded": signatures loaded from the cache, "compiled": signatures compiled in this
    process, "cache": where the cache is}."""
    from numba.core.registry import CPUDispatcher

    from . import flow, signals

    loaded = built = kernels = 0
    where = None
    for module in (flow, signals):
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and obj.signatures:
                kernels += 1
                stats = obj.stats
                loaded += sum(stats.cache_hits.values())
                built += sum(stats.cache_misses.values())
                where = where or stats.cache_path
    return {"kernels": kernels, "loaded": loaded, "compiled": built, "cache": where}
