"""What the spotter reads from a face (`mfvan.kernels.signals`): the head's rigid motion,
the strain and region signals, their noise floors, key frames and measuring rate."""

import cv2
import numpy as np
import pytest
from warped import INTERIOR, affine, truth_field

from mfvan.kernels import signals
from mfvan.kernels.flow import dense_flow
from mfvan.kernels.spotter import Spotter, SpotterParams, _Frame


def test_rigid_compensation_cancels_pure_head_motion(face):
    matrix = cv2.getRotationMatrix2D((63.5, 63.5), 0.6, 1.004)
    matrix[:, 2] += (0.8, -0.5)
    moved = affine(face, matrix)
    params = signals.rigid_motion(face, moved, signals.roi_boxes(128, signals.RIGID))
    field = signals.rigid_field(params, 128)
    truth = truth_field(matrix, 128)
    assert np.abs(field - truth)[INTERIOR].max() < 0.1, params
    residual = dense_flow(face, signals.warp_rigid(moved, params))
    stats = signals.roi_stats(residual, signals.roi_boxes(128, signals.SIGNAL_ROIS))
    before = signals.roi_stats(dense_flow(face, moved), signals.roi_boxes(128, signals.SIGNAL_ROIS))
    assert before[:, 0].min() > 0.5, "the uncompensated head motion is large"
    assert stats[:, 0].max() < min(0.1, 0.15 * before[:, 0].min()), "and then almost gone"


def test_a_pairs_flow_is_the_expression_with_the_head_motion_undone(face):
    """`kernels.motion.pair_flow`, the motion the recognizer sees: a local 0.8 px push at the
    mouth reads the same with and without a head motion (rotation, scale, shift) on top.
    The spotter's flow is smoothed (`FlowParams.flow_smooth`), so a local push reads at
    about half its peak."""
    from mfvan.kernels.motion import pair_flow

    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    bump = np.exp(-((xx - 64) ** 2 + (yy - 96) ** 2) / (2 * 12.0**2))  # the mouth region
    # second(x + d(x)) = first(x) for d = (0.8 bump, 0): sample the first at x - d
    expressed = cv2.remap(face, xx - 0.8 * bump, yy, cv2.INTER_CUBIC, None, cv2.BORDER_REPLICATE)
    matrix = cv2.getRotationMatrix2D((63.5, 63.5), 0.5, 1.003)
    matrix[:, 2] += (0.7, -0.4)
    alone = pair_flow(face, expressed)
    flow = pair_flow(face, affine(expressed, matrix))
    assert flow.shape == (128, 128, 2) and flow.dtype == np.float32
    mouth = flow[90:102, 58:70]
    assert 0.25 < float(np.median(mouth[..., 0])) < 0.8, "the push, to the right"
    assert abs(float(np.median(mouth[..., 1]))) < 0.1
    assert float(np.abs(alone[8:30, 20:108]).max()) < 0.01, "nothing moved on the forehead"
    assert float(np.abs(flow - alone)[16:112, 16:112].max()) < 0.15, "the head's motion undone"
    with pytest.raises(ValueError, match="square grey crops"):
        pair_flow(face, face[:64])


def test_strain_and_region_signals_on_known_fields():
    size = 64
    flow = np.zeros((size, size, 2), np.float32)
    flow[..., 0], flow[..., 1] = 0.7, -0.2
    assert np.abs(signals.optical_strain(flow)).max() < 1e-6, "translation has no strain"
    # a uniform stretch u = e x has strain e everywhere
    flow[..., 0] = 0.01 * np.arange(size)[None, :]
    flow[..., 1] = 0.0
    assert np.allclose(signals.optical_strain(flow), 0.01, atol=1e-5)
    # main direction: a region moving right by 0.5 px, with noise the other way elsewhere
    flow[:] = 0
    boxes = signals.roi_boxes(size, ["mouth_left", "chin"])
    x0, y0, x1, y1 = boxes[0]
    flow[y0:y1, x0:x1, 0] = 0.5
    flow[y0 : y0 + 2, x0:x1, 0] = -0.1
    stats = signals.roi_stats(flow, boxes)
    assert stats[0, 1] == pytest.approx(0.5) and stats[0, 2] == pytest.approx(0.0)
    assert stats[1].tolist() == [0.0, 0.0, 0.0]


def test_texture_weight_is_low_on_flat_skin_and_high_on_texture_and_steers_the_region_stats(face):
    flat = np.full((128, 128), 120.0, np.float32)
    img = face.copy()
    img[:, :64] = flat[:, :64]  # the left half made flat
    weight = signals.texture_weight(img)
    assert weight.shape == img.shape and weight.min() >= 0.0 and weight.max() <= 1.0
    assert weight[10:118, 10:60].max() < 1e-3, "no texture, no confidence"
    assert weight[10:118, 70:118].mean() > 0.4
    boxes = np.array([[32, 32, 96, 96]], np.int64)  # half flat, half textured
    flow = np.zeros((128, 128, 2), np.float32)
    flow[:, 64:, 0] = 0.3  # the textured half moves right
    flow[:, :64, 1] = 0.6  # the flat half: a larger motion, down (spread there, not seen)
    plain = signals.roi_stats(flow, boxes)[0]
    assert plain[2] == pytest.approx(0.6), "unweighted, the flat half's motion wins"
    weighted = signals.roi_stats(flow, boxes, weight)[0]
    assert weighted[1] == pytest.approx(0.3) and abs(weighted[2]) < 1e-3
    ones = np.ones((128, 128), np.float32)
    assert np.array_equal(signals.roi_stats(flow, boxes, ones), signals.roi_stats(flow, boxes))


def test_a_new_streams_noise_estimates_are_plain_means_until_their_window_fills():
    """Step 1g: the start threshold's running mean and a floor state's mean are the plain
    means of the first samples (an exponential mean would still lean on the first one),
    and exponential once the noise window has filled."""
    ms = 1_000_000
    for fast, want in ((True, 0.2), (False, 0.1 + 0.0025 * 0.1 + 0.0025 * 0.2)):
        spotter = Spotter(SpotterParams(fast_start=fast))
        for k, x in enumerate((0.1, 0.2, 0.3)):
            spotter._update_noise(5 * ms * k, x)
        assert spotter._mean == pytest.approx(want, rel=0.02), fast
    spotter = Spotter()
    spotter._setup(128)
    n = len(spotter._signal_names)
    for k, x in enumerate((0.10, 0.12, 0.14, 0.12)):
        spotter._gate_ns = 5 * ms * (k - 1) if k else None  # the frame measured before
        spotter._update_floors(np.full(n, x, np.float32), 0, 5 * ms * k)
    assert spotter._floors[0][0] == pytest.approx(np.full(n, 0.12), abs=1e-6)
    spotter._floors[0] = (*spotter._floors[0][:2], 400)  # a full window (2 s at 200 fps) since
    spotter._gate_ns = 15 * ms
    spotter._update_floors(np.full(n, 0.13, np.float32), 0, 20 * ms)
    assert spotter._floors[0][0] == pytest.approx(np.full(n, 0.12 + 0.01 * 0.0025), abs=1e-6)


def test_a_floor_state_away_for_a_while_moves_by_one_frames_weight():
    """A GOP state's floors move at each frame at rest by that frame's time over the noise
    window, not by the time since the state was last in use (its window filled long ago:
    no fast start)."""
    spotter = Spotter(SpotterParams(fast_start=False))
    spotter._setup(128)
    n = len(spotter._signal_names)
    spotter._update_floors(np.full(n, 0.1, np.float32), 1, 0)
    start = spotter._floors[1][0].copy()
    second = 1_000_000_000
    spotter._gate_ns = second  # the frame before (the other state's, since 0 s)
    spotter._update_floors(np.full(n, 0.5, np.float32), 1, second + 5_000_000)
    moved = spotter._floors[1][0] - start
    # one frame (5 ms) of a 2 s window, of a sample clipped at mean + 3 deviations
    assert 0 < moved.max() <= 0.005 / 2.0 * 0.5, moved


def test_after_a_key_frame_the_reference_is_the_new_gops_own_first_frame(face):
    """Step 1h: a codec re-codes a face's texture at each key frame (here each GOP has its
    own texture step). From `min_lag_s` after a key frame's first averaged frames, the
    frames compare with those, not with a frame of the GOP before: the comparisons of a
    GOP's first `lag_s` are as quiet as those later in it. An all-key-frame stream, or a
    blink near the key frame, keeps the plain reference."""
    rng = np.random.default_rng(0)
    gop = 100  # 1 s at 100 fps
    steps = [
        cv2.GaussianBlur(rng.normal(0, 2, face.shape).astype(np.float32), (0, 0), 1.5)
        for _ in range(4)
    ]
    frames = [
        np.clip(face + steps[i // gop] + rng.normal(0, 0.5, face.shape), 0, 255).astype(np.uint8)
        for i in range(4 * gop)
    ]
    quietness = {}
    for own in (False, True):
        spotter = Spotter(SpotterParams(gop_reference=own))
        signal = []
        for i, crop in enumerate(frames):
            assert not spotter.push(crop, i, i * 10_000_000, key_frame=i % gop == 0)
            signal.append(spotter.last_signal)
        signal = np.array(signal)
        early = np.concatenate([signal[k * gop + 20 : k * gop + 40] for k in (1, 2, 3)])
        later = np.concatenate([signal[k * gop + 50 : k * gop + 90] for k in (1, 2, 3)])
        quietness[own] = early.mean() / later.mean()
    assert quietness[False] > 3, quietness  # across a key frame: its texture step
    assert quietness[True] < 1.5, quietness

    ms = 1_000_000
    spotter = Spotter()
    spotter._buffer.extend(
        _Frame(i, 10 * ms * i, None, None, i == 100, 10 * ms * i) for i in range(100, 130)
    )
    spotter._keys, spotter._last_key_ns = 1, 1000 * ms
    assert spotter._gop_reference(1160 * ms) is None, "the first frames not min_lag_s old yet"
    assert spotter._gop_reference(1170 * ms)[0] == 107, "the first whose average is after it"
    spotter._blinks.append(1090 * ms)
    assert spotter._gop_reference(1170 * ms) is None, "a blink near it"
    spotter._blinks.clear()
    spotter._keys = len(spotter._buffer)
    assert spotter._gop_reference(1170 * ms) is None, "every frame a key frame (FFV1)"


def _gops(face, fps: int, p_noise: float, seconds: int = 4, push=None):
    """Crops as a codec at `fps` gives them with a key frame every second: each GOP its own
    texture (a key frame re-codes it), `p_noise` grey levels of change between predicted
    pictures; `push(i)`: px of a local push at the mouth at frame i (an expression)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    bump = np.exp(-((xx - 64) ** 2 + (yy - 96) ** 2) / (2 * 12.0**2))
    textures = [
        cv2.GaussianBlur(rng.normal(0, 12, face.shape).astype(np.float32), (0, 0), 1.0)
        for _ in range(seconds)
    ]
    out = []
    for i in range(seconds * fps):
        img = face.astype(np.float32)
        d = push(i) if push else 0.0
        if d:
            img = cv2.remap(img, xx - d * bump, yy, cv2.INTER_CUBIC, None, cv2.BORDER_REPLICATE)
        out.append(img + textures[i // fps] + rng.normal(0, p_noise, face.shape).astype(np.float32))
    return out


def test_a_key_frame_that_re_codes_the_texture_is_bridged_not_compared_across(face):
    """Step 1j (`gop_bridge`, off by default: on SynthME's camera-like cells it spotted
    worse, docs/spotting.md): at 200 fps a predicted picture barely changes and a key
    frame re-codes the whole texture. A comparison across it is chained from the flows
    within each GOP: the first 0.2 s of a GOP are as quiet as the rest, the frames whose
    averages straddle the key frame are not measured, and an expression that rises across
    a key frame is found with its apex. Where the predicted pictures change nearly as much
    as the key frame (30 fps), the key frame is not bridged."""
    fps, ms = 200, 1_000_000
    frames = _gops(face, fps, 0.1)
    quiet = {}
    for bridge in (False, True):
        spotter = Spotter(SpotterParams(gop_bridge=bridge, gop_reference=False))
        signal = []
        for i, crop in enumerate(frames):
            assert not spotter.push(crop, i, i * 5 * ms, key_frame=i % fps == 0)
            signal.append(spotter.last_signal)
        signal = np.array(signal)
        early = np.concatenate([signal[k * fps + 4 : k * fps + 40] for k in (1, 2, 3)])
        later = np.concatenate([signal[k * fps + 100 : k * fps + 180] for k in (1, 2, 3)])
        quiet[bridge] = np.nanmean(early) / np.nanmean(later)
        if bridge:
            # the frames whose denoising window (20 ms) straddles a key frame are not
            # measured: the signal stays the one before until the window is past it
            for k in (fps, 2 * fps):
                assert (signal[k : k + 3] == signal[k - 1]).all(), signal[k - 2 : k + 5]
                assert signal[k + 3] != signal[k - 1]
            assert [k.ns for k in spotter._key_frames] == [3000 * ms], "the newest is bridged"
    assert quiet[False] > 3, quiet  # across a key frame: its texture step
    assert quiet[True] < 1.5, quiet

    # an expression of the mouth rising for 60 ms across the key frame at 2 s
    apex = 2 * fps + 6

    def push(i):
        return 0.8 * max(0.0, 1 - abs(i - apex) / 12) if abs(i - apex) < 12 else 0.0

    spotter, found = Spotter(SpotterParams(gop_bridge=True, gop_reference=False)), []
    for i, crop in enumerate(_gops(face, fps, 0.1, 3, push)):
        found += spotter.push(crop, i, i * 5 * ms, key_frame=i % fps == 0)
    assert len(found) == 1 and abs(found[0].apex - apex) <= 4, [(f.onset, f.apex) for f in found]

    spotter = Spotter(SpotterParams(gop_bridge=True))
    for i, crop in enumerate(_gops(face, 30, 1.5, 3)):
        spotter.push(crop, i, i * 33 * ms, key_frame=i % 30 == 0)
    assert not spotter._key_frames, "30 fps: predicted pictures change as much, no bridge"


@pytest.mark.parametrize(("fps", "hz", "measured"), [(200, 100, 100), (200, 0, 200), (30, 100, 30)])
def test_the_signal_is_measured_at_most_measure_hz_times_a_second(face, fps, hz, measured):
    """Step 1i: every frame is kept, but the flow runs at most `measure_hz` times a
    second of media time: every other frame at 200 fps, every frame at 30 fps."""
    calls = []

    def flow(a, b):
        calls.append(1)
        return np.zeros((*a.shape, 2), np.float32)

    spotter = Spotter(SpotterParams(measure_hz=hz), flow_fn=flow)
    period = int(1e9 / fps)
    for i in range(2 * fps):  # 2 s; the first min_lag_s has no reference to compare with
        spotter.push(face, i, i * period)
    first = int(np.ceil(spotter.params.min_lag_s * fps))
    assert len(spotter._buffer) > 0.8 * (spotter.params.lag_s + spotter.params.max_duration_s) * fps
    assert abs(len(calls) - measured * (2 - first / fps)) <= 1, len(calls)
