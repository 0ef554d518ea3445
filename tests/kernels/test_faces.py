"""Faces (`mfvan.kernels.faces`): the tracker's crops hold still on jittering detections,
follow a moving face, and are searched for only around it."""

import numpy as np
import pytest

from mfvan.kernels import signals
from mfvan.kernels.flow import dense_flow
from mfvan.model.data import synth


@pytest.mark.slow
def test_the_tracker_holds_one_crop_on_a_face_whose_detections_jitter():
    """Subject 3's Haar boxes jump between 100 and 200 px wide from one detection to the
    next; the eye-anchored crop must not follow them."""
    from mfvan.kernels.faces import FaceTracker, to_grey

    stream = synth.SynthStream(synth.CONFIGS["standard"], subject=3, seed=0, video=2)
    tracker = FaceTracker(size=128)
    for t in range(600):
        frame = stream.frame(t)
        assert tracker.update(to_grey(frame.image), frame.timestamp_ns) is not None
    assert tracker.version == 1
    assert tracker.crop.aligned


def test_a_tracker_without_a_thread_on_the_live_schedule_gives_the_live_crops():
    """`scheduled`: detections take effect `detect_delay_s` after the frame searched, as
    with the worker thread, so offline crops are the live stage's frame for frame (a
    tracker that settles at once starts its crops earlier)."""
    from mfvan.kernels.faces import FaceTracker, to_grey

    stream = synth.SynthStream(synth.CONFIGS["standard"], subject=1, seed=0)
    frames = [stream.frame(t) for t in range(60)]
    live = FaceTracker(size=128, background=True)
    offline = FaceTracker(size=128, scheduled=True)
    at_once = FaceTracker(size=128)
    crops = {"live": [], "offline": [], "at once": []}
    for f in frames:
        grey = to_grey(f.image)
        for name, tracker in (("live", live), ("offline", offline), ("at once", at_once)):
            crop = tracker.update(grey, f.timestamp_ns)
            crops[name].append(None if crop is None else crop.apply(grey))
    first = [next(i for i, c in enumerate(crops[n]) if c is not None) for n in crops]
    assert first[0] == first[1] == round(live.detect_delay_ns / 5e6) > 0 and first[2] == 0
    for a, b in zip(crops["live"], crops["offline"], strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_a_crop_of_a_shifted_face_is_a_shifted_crop():
    """Area-filtered crops: a sub-pixel head shift moves every region of the crop alike
    (bilinear downscaling aliased, and regions seemed to move by different amounts)."""
    from mfvan.kernels.faces import FaceDetector, make_crop, to_grey

    renderer = synth.SubjectRenderer(1, 0, synth.CONFIGS["standard"])
    still = synth.FrameState({})
    moved = synth.FrameState({}, tx=0.7, ty=0.3)
    a, b = (to_grey(renderer.render(s, noise=False)) for s in (still, moved))
    detector = FaceDetector()
    box = detector.detect(a)
    crop = make_crop(box, 128, detector.eyes(a, box))
    flow = dense_flow(crop.apply(a), crop.apply(b))
    stats = signals.roi_stats(flow, signals.roi_boxes(128))
    scale = np.sqrt(abs(np.linalg.det(crop.matrix[:, :2])))
    assert np.abs(stats[:, 1] - 0.7 * scale).max() < 0.06
    assert np.abs(stats[:, 2] - 0.3 * scale).max() < 0.06


def test_a_camera_frame_is_filtered_and_searched_only_around_the_face():
    """Live frames are camera-sized: the crop filters only its own footprint, and a
    tracker re-detects only around the face it holds; both give what the whole frame
    gives."""
    from mfvan.deploy.runtime.synth_source import SynthSource
    from mfvan.kernels.faces import Crop, FaceDetector, FaceTracker, make_crop

    frame = next(iter(SynthSource("synth://?fps=50&seed=3&realtime=0"))).image
    detector = FaceDetector()
    box = detector.detect(frame)
    crop = make_crop(box, 128, detector.eyes(frame, box))
    whole = frame.shape[1], frame.shape[0], 0, 0
    assert crop._footprint(frame.shape) != whole and crop._footprint(frame.shape)[0] > 0

    class WholeFrame(Crop):
        def _footprint(self, shape):
            return 0, 0, shape[1], shape[0]

    reference = WholeFrame(crop.matrix, crop.size, crop.aligned).apply(frame)
    diff = np.abs(crop.apply(frame).astype(int) - reference.astype(int))
    # the same crop up to where the area filter's boxes fall (sharp edges differ a little)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 10
    near = detector.detect(frame, near=box)
    assert max(abs(a - b) for a, b in zip(near.centre, box.centre, strict=True)) < 0.1 * box.w
    tracker = FaceTracker(size=128)
    tracker.update(frame, 0)
    away = np.full_like(frame, 30)
    away[:, 360:] = frame[:, 180:460]  # the face jumped far right: found all the same
    tracker.update(away, tracker.redetect_ns)
    (face,) = tracker.in_view
    assert face._misses == 0 and face.geometry.cx > frame.shape[1] / 2
