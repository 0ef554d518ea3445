"""SynthME: faces, action units, timing, outputs and determinism, held to their spec."""

import csv
from dataclasses import replace

import cv2
import numpy as np
import pytest
from helpers import tree_digest

from mfvan.kernels.faces import to_grey
from mfvan.model.data import casme2, synth
from mfvan.model.data.synth_face import ACTION_UNITS, Identity, au_bumps

TINY = synth.CONFIGS["tiny"]
STANDARD = synth.CONFIGS["standard"]
QUIET = replace(STANDARD, nuisances=synth.Nuisances.none(), clip_nuisances=synth.Nuisances.none())
EXPRESSION_AUS = sorted(a for a in ACTION_UNITS if a != synth.BLINK)


@pytest.fixture(scope="module")
def renderer():
    return synth.SubjectRenderer(1, 0, QUIET)


def _face_units(renderer):
    """Each pixel's position in face-height units, as the AU anchors are given."""
    p = renderer.placement
    return (renderer.grid[..., 0] - p.cx) / p.h, (renderer.grid[..., 1] - p.cy) / p.h


def _bump_distance(renderer, au):
    """Each pixel's distance from the nearest anchor of `au`, in that anchor's sigmas."""
    x, y = _face_units(renderer)
    return np.min(
        [
            np.sqrt(((x - x0) / sx) ** 2 + ((y - y0) / sy) ** 2)
            for x0, y0, sx, sy, _, _ in au_bumps(renderer.identity, au)
        ],
        axis=0,
    )


# ----------------------------------------------------------------------------- identities


def _face_crop(image, renderer):
    """The face's grey crop, normalised to zero mean and unit std (global light removed)."""
    p = renderer.placement
    crop = (
        image[
            int(p.cy - 0.35 * p.h) : int(p.cy + 0.45 * p.h),
            int(p.cx - 0.3 * p.h) : int(p.cx + 0.3 * p.h),
        ]
        .astype(np.float32)
        .mean(axis=2)
    )
    return (crop - crop.mean()) / crop.std()


def test_identity_changes_a_face_more_than_any_nuisance_or_micro_expression_does():
    renderers = [synth.SubjectRenderer(s, 0, STANDARD) for s in range(1, 11)]
    neutral = [_face_crop(r.render(synth.FrameState({}), noise=False), r) for r in renderers]
    across = min(np.abs(a - b).mean() for i, a in enumerate(neutral) for b in neutral[i + 1 :])
    first = renderers[0]
    # Twenty seconds of one subject: drift, blinks, flicker, light change, macro-expressions.
    stream = synth.SynthStream(STANDARD, subject=1)
    nuisance = max(
        np.abs(_face_crop(stream.frame(t).image, first) - neutral[0]).mean()
        for t in range(0, 4000, 200)
    )
    signal = 0.0
    for index in range(10):
        clip, timeline = synth.make_clip(first, 1, index, seed=0)
        e = clip.expression
        onset, apex = (
            _face_crop(first.render(timeline.state(t)), first) for t in (e.onset, e.apex)
        )
        signal = max(signal, np.abs(apex - onset).mean())
    assert across > 1.3 * nuisance, (across, nuisance)
    assert across > 3.0 * signal, (across, signal)


def test_each_identity_parameter_varies_across_subjects():
    idents = [Identity.sample(s, 0) for s in range(1, 17)]
    for name in (
        "half_width",
        "eye_dx",
        "eye_w",
        "brow_gap",
        "nose_y",
        "mouth_w",
        "mouth_y",
        "light_azimuth",
        "texture_amp",
        "skin",
        "hair",
        "background",
    ):
        assert len({getattr(i, name) for i in idents}) == 16, name


# ----------------------------------------------------------------------------- action units


@pytest.mark.parametrize("au", EXPRESSION_AUS)
def test_each_action_unit_peaks_on_its_anchor_and_vanishes_far_from_it(renderer, au):
    field = renderer.fields[au]
    mag = np.sqrt((field**2).sum(-1))
    dist = _bump_distance(renderer, au)
    assert mag.max() == pytest.approx(1.0)
    assert dist[np.unravel_index(mag.argmax(), mag.shape)] < 1.5
    assert mag[dist > 4.0].max() < 2e-3


@pytest.mark.parametrize("au", EXPRESSION_AUS)
def test_each_action_unit_changes_the_image_only_in_its_region(renderer, au):
    onset = renderer.render(synth.FrameState({}), noise=False).astype(np.float32)
    apex = renderer.render(synth.FrameState({au: 2.0}), noise=False).astype(np.float32)
    diff = np.abs(apex - onset).max(axis=2)
    dist = _bump_distance(renderer, au)
    assert diff[dist < 2.0].max() > 10, "the AU must visibly move its region"
    assert diff[dist > 5.0].max() <= 1.0, "nothing far from the AU may change"


# The visible motion of each AU at its first anchor (image left side), as FACS describes it.
AU_MOTION = {
    1: "up",
    2: "up",
    4: "down",
    6: "up",
    9: "up",
    12: "up",
    14: "in",
    15: "down",
    17: "up",
    26: "down",
}


@pytest.mark.parametrize("au", EXPRESSION_AUS)
def test_each_action_unit_moves_its_region_the_way_facs_describes(renderer, au):
    x0, y0 = au_bumps(renderer.identity, au)[0][:2]
    p = renderer.placement
    col, row = int(round(p.cx + x0 * p.h)), int(round(p.cy + y0 * p.h))
    dx, dy = renderer.fields[au][row, col]
    expected = AU_MOTION[au]
    if expected == "up":
        assert dy < -0.5
    elif expected == "down":
        assert dy > 0.5
    else:  # toward the face's midline from the image-left anchor
        assert x0 < 0 and dx > 0.5
    if au == 12:
        assert dx < 0, "AU12 pulls the lip corner outward"
    if au == 4:
        assert dx > 0, "AU4 draws the brow toward the midline"


def test_a_blink_covers_the_eye_and_leaves_the_mouth_alone(renderer):
    ident, p = renderer.identity, renderer.placement
    ex, ey = ident.landmarks()["eye_l"]
    col, row = int(p.cx + ex * p.h), int(p.cy + ey * p.h)
    r = max(2, int(ident.eye_h * p.h * 0.6))
    open_ = renderer.render(synth.FrameState({}), noise=False).astype(np.float32)
    closed = renderer.render(synth.FrameState({synth.BLINK: 1.0}), noise=False).astype(np.float32)
    eye = (slice(row - r, row + r), slice(col - r, col + r))
    # The pupil is the darkest thing on the face; a closed lid shows skin instead.
    assert closed[eye].mean() > open_[eye].mean() + 30
    my = int(p.cy + ident.mouth_y * p.h)
    assert np.abs(closed[my - 10 : my + 10] - open_[my - 10 : my + 10]).max() <= 1.0


# ----------------------------------------------------------------------------- timing and intensity


def _draw_many(config, kind, n=200):
    r = synth.SubjectRenderer(2, 0, config)
    rng = np.random.default_rng(5)
    return r, [synth.draw_expression(rng, r, kind, onset=100) for _ in range(n)]


@pytest.mark.parametrize("fps", [200.0, 100.0, 25.0])
def test_micro_expressions_are_short_and_faint(fps):
    config = replace(TINY, fps=fps)
    _, exprs = _draw_many(config, "micro")
    ms = 1000.0 / fps
    for e in exprs:
        assert (e.offset - e.onset) * ms < 500.0
        assert 40.0 - ms / 2 <= (e.apex - e.onset) * ms <= 250.0 + ms / 2
        assert e.onset < e.apex < e.offset
        assert 1.0 * config.px_scale <= e.peak_px <= 2.0 * config.px_scale
    assert {e.emotion for e in exprs} == set(synth.EMOTIONS_5)


def test_macro_expressions_are_longer_and_stronger_than_any_micro_expression():
    _, micro = _draw_many(TINY, "micro")
    _, macro = _draw_many(TINY, "macro")
    assert min(e.offset - e.onset for e in macro) * 1000 / TINY.fps >= 600.0
    assert min(e.offset - e.onset for e in macro) > max(e.offset - e.onset for e in micro)
    assert min(e.peak_px for e in macro) >= 4.0 * TINY.px_scale > max(e.peak_px for e in micro)


def test_intensity_is_zero_at_onset_and_offset_and_one_at_the_apex():
    _, exprs = _draw_many(TINY, "micro", 20)
    for e in exprs:
        assert e.intensity(e.onset) == 0.0 == e.intensity(e.offset)
        assert e.intensity(e.apex) == pytest.approx(1.0)
        rising = [e.intensity(t) for t in range(e.onset, e.apex + 1)]
        assert rising == sorted(rising)


def test_the_rendered_peak_displacement_is_the_drawn_one():
    rend, exprs = _draw_many(QUIET, "micro", 10)
    for e in exprs:
        state = synth.FrameState(dict(zip(e.aus, e.au_px, strict=True)))
        flow = rend.forward_flow(synth.FrameState({}), state)
        assert np.sqrt((flow**2).sum(-1)).max() == pytest.approx(e.peak_px, rel=0.05)


def test_an_fps_under_25_is_refused():
    with pytest.raises(ValueError, match="fps must be at least 25"):
        replace(TINY, fps=24.0)


# ----------------------------------------------------------------------------- ground-truth flow


@pytest.mark.parametrize("emotion", synth.EMOTIONS_5)
def test_warping_by_the_ground_truth_flow_reproduces_the_other_frame(emotion):
    """onset(x) = apex(x + flow(x)): warping apex back by the flow gives onset, and warping
    onset forward by it gives apex, with head drift and rotation on.

    Tolerance: where the expression moves the face, under 1.5 grey levels of 255 on average
    (what bilinear re-sampling of the rendered frames leaves), under a third of the error
    of no flow at all, and under that of the same flow 20% too short.
    """
    config = replace(
        STANDARD, clip_nuisances=replace(synth.Nuisances.none(), drift_px=3.0, drift_deg=1.0)
    )
    subject = 2 + synth.EMOTIONS_5.index(emotion)
    r = synth.SubjectRenderer(subject, 0, config)
    clip, timeline = synth.make_clip(r, subject, 0, seed=0, emotion=emotion)
    e = clip.expression
    a, b = timeline.state(e.onset), timeline.state(e.apex)
    assert (a.tx, a.ty, a.angle_deg) != (b.tx, b.ty, b.angle_deg)
    # Before quantisation: rounding to 8 bits alone leaves a floor of about 0.3 grey levels.
    onset, apex = r.render_exact(a), r.render_exact(b)
    flow = r.forward_flow(a, b)
    moving = np.sqrt((r.displacement(b.au_px) ** 2).sum(-1)) > 0.5 * e.peak_px
    moving[:10] = moving[-10:] = moving[:, :10] = moving[:, -10:] = False  # frame borders

    def warp(image, points):
        return cv2.remap(image, *points.transpose(2, 0, 1), cv2.INTER_LINEAR)

    def back_error(k):
        return np.abs(warp(apex, r.grid + k * flow) - onset)[moving].mean()

    def forward_error(k):
        # apex(x) ~ onset(x - f(x - f(x))), the first-order inverse of x -> x + f(x).
        inverse = r.grid - warp(k * flow, r.grid - k * flow)
        return np.abs(warp(onset, inverse) - apex)[moving].mean()

    for error in (back_error, forward_error):
        exact, short, none = error(1.0), error(0.8), error(0.0)
        assert exact < 1.5 and exact < none / 3 and exact < short, (
            error.__name__,
            exact,
            short,
            none,
        )


def test_the_written_flow_file_is_the_clips_ground_truth_flow(tiny_set):
    rows = list(csv.DictReader(open(tiny_set / "clips" / "synthme-clips.csv")))
    row = rows[0]
    subject = int(row["subject"])
    r = synth.SubjectRenderer(subject, 0, TINY)
    clip, timeline = synth.make_clip(r, subject, 0, seed=0)
    assert clip.filename == row["filename"] and clip.expression.apex == int(row["apex"])
    saved = np.load(tiny_set / "clips" / "flow" / f"sub{subject:02d}" / f"{row['filename']}.npy")
    expected = r.forward_flow(
        timeline.state(clip.expression.onset), timeline.state(clip.expression.apex)
    )
    assert saved.dtype == np.float32 and saved.shape == (*TINY.frame_size, 2)
    np.testing.assert_array_equal(saved, expected)


# ----------------------------------------------------------------------------- outputs


def test_clips_are_read_back_by_the_casme2_loader_with_their_labels(tiny_set):
    root = tiny_set / "clips"
    samples = casme2.read_samples(root)
    rows = list(csv.DictReader(open(root / "synthme-clips.csv")))
    assert len(samples) == len(rows) == TINY.subjects * TINY.clips_per_subject
    for s, row in zip(samples, rows, strict=True):
        assert (s.subject, s.filename) == (int(row["subject"]), row["filename"])
        assert (s.onset, s.apex, s.offset) == (
            int(row["onset"]),
            int(row["apex"]),
            int(row["offset"]),
        )
        assert s.emotion == row["emotion"] and s.emotion in casme2.EMOTIONS
        assert s.action_units == row["aus"]
        assert (synth.EMOTION_TO_3[s.emotion] or "") == row["class3"]
        assert s.frame_numbers() == list(range(int(row["first"]), int(row["last"]) + 1))
        assert s.frame_numbers()[0] < s.onset < s.apex < s.offset < s.frame_numbers()[-1]
        image = cv2.imread(str(s.frame_path(s.apex)))
        assert image.shape == (*TINY.frame_size, 3)
    assert not any(s.note for s in samples)


def test_the_coding_sheet_has_casme2s_columns(tiny_set):
    import openpyxl

    sheet = openpyxl.load_workbook(tiny_set / "clips" / "CASME2-coding-synthme.xlsx").active
    header = [c.value for c in sheet[1]]
    assert header == [name for name in casme2.SHEET_COLUMNS]


def test_a_long_video_decodes_to_its_frames_with_ground_truth_inside_it(tiny_set):
    import av

    long_dir = tiny_set / "long"
    truth = list(csv.DictReader(open(long_dir / "ground_truth.csv")))
    name = synth.long_video_name(TINY, 0, 1)
    n = int(TINY.long_seconds * TINY.fps)
    with av.open(str(long_dir / name)) as container:
        assert container.streams.video[0].codec_context.name == "ffv1"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == n
    stream = synth.SynthStream(TINY, subject=1, seed=0, video=0)
    for t in (0, n // 2, n - 1):
        # FFV1 is lossless; what differs is the RGB -> yuv420p conversion alone.
        err = np.abs(frames[t].astype(np.float32) - stream.frame(t).image).mean()
        assert err < 2.0, (t, err)
    micro = [r for r in truth if r["video"] == name and r["kind"] == "micro"]
    assert len(micro) >= 1
    for r in truth:
        assert 0 <= int(r["onset"]) < int(r["apex"]) < int(r["offset"]) < n


def test_a_long_video_is_a_prefix_of_the_live_stream_however_far_it_runs():
    near = synth.SynthStream(TINY, subject=2, seed=4)
    far = synth.SynthStream(TINY, subject=2, seed=4)
    far.frame(int(25 * TINY.fps))  # schedules three segments ahead
    limit = int(9 * TINY.fps)
    assert near.expressions_until(limit) == far.expressions_until(limit)
    for t in (0, 37, 999):
        np.testing.assert_array_equal(near.frame(t).image, far.frame(t).image)
    frames = iter(synth.SynthStream(TINY, subject=2, seed=4))
    first = [next(frames) for _ in range(3)]
    assert [f.index for f in first] == [0, 1, 2]
    assert first[1].timestamp_ns == 5_000_000  # 200 fps
    np.testing.assert_array_equal(first[2].image, near.frame(2).image)


def test_a_long_stream_holds_micro_and_macro_expressions_and_blinks():
    stream = synth.SynthStream(TINY, subject=1, seed=0)
    end = int(30 * TINY.fps)
    kinds = [e.kind for e in stream.expressions_until(end)]
    assert kinds.count("micro") == 3 * TINY.micro_per_segment
    assert kinds.count("macro") == 3 * TINY.nuisances.macro_per_segment
    assert len(stream.blinks_until(end)) >= 3
    spans = sorted((e.onset, e.offset) for e in stream.expressions_until(end))
    overlapping = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if a[1] >= b[0]]
    assert not overlapping, "expressions never overlap"


def test_previews_show_every_emotion(tiny_set):
    for emotion in synth.EMOTIONS_5:
        image = cv2.imread(str(tiny_set / "preview" / f"{emotion}.png"))
        assert image is not None and image.shape[1] == 3 * TINY.frame_size[1]


# ----------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_the_same_seed_gives_byte_identical_output_and_another_seed_does_not(tiny_set, tmp_path):
    from mfvan.deploy.cli import main

    def generate(out, *flags):
        assert main(["synth", "--config", "tiny", "--out", str(out), *flags]) == 0
        return tree_digest(out)

    first = tree_digest(tiny_set)
    # One worker this time: the output must not depend on how work was split.
    assert generate(tmp_path / "a", "--preview", "--workers", "1") == first
    other = generate(tmp_path / "b", "--seed", "1", "--workers", "2")
    media = [k for k in set(first) & set(other) if k.endswith((".jpg", ".npy", ".mkv", ".xlsx"))]
    assert media and all(first[k] != other[k] for k in media)


# ----------------------------------------------------------------------------- real tools


def _haar():
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


@pytest.mark.slow
@pytest.mark.parametrize("config", [STANDARD, TINY], ids=["standard", "tiny"])
def test_opencvs_haar_cascade_finds_the_face_in_95_percent_of_frames(config):
    cascade = _haar()
    found = total = 0
    min_face = int(config.face_height * 0.4)
    for subject in range(1, 21):
        stream = synth.SynthStream(config, subject=subject, seed=7)
        for t in range(0, int(10 * config.fps), int(config.fps)):  # a frame a second for 10 s
            grey = cv2.equalizeHist(to_grey(stream.frame(t).image))
            faces = cascade.detectMultiScale(grey, 1.1, 4, minSize=(min_face, min_face))
            found += len(faces) > 0
            total += 1
    assert found / total >= 0.95, f"{found}/{total}"


def test_realistic_mode_turns_heads_and_raises_hands_clear_of_micro_expressions():
    """The realistic presets' gestures: both kinds drawn, none within 0.2 s of a
    micro-expression, and none in a preset without them; the long videos' nuisances.csv
    lists them."""
    camera = replace(synth.CONFIGS["camera"], frame_size=(192, 160), face_height=128.0)
    stream = synth.SynthStream(camera, subject=1, seed=3)
    n = int(120 * camera.fps)
    gestures = stream.gestures_until(n)
    assert {g.kind for g in gestures} == {"turn", "hand"}
    assert all(10.0 <= abs(g.amount) <= 30.0 for g in gestures if g.kind == "turn")
    margin = camera.frames(200.0)
    for e in stream.expressions_until(n):
        if e.kind == "micro":
            near = [
                g for g in gestures if g.start <= e.offset + margin and e.onset - margin <= g.end
            ]
            assert not near, f"a gesture over the micro-expression at {e.onset}"
    spans = sorted((g.start, g.end) for g in gestures)
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False)), "one at a time"
    assert not synth.SynthStream(STANDARD, subject=1, seed=3).gestures_until(n)


def test_a_turned_head_and_a_raised_hand_render_as_drawn():
    """Yaw moves the face's middle sideways by the cylinder's R sin(yaw) and squeezes its
    far side; a raised hand covers the mouth and leaves the eyes alone; at 0 neither
    changes a pixel."""
    config = replace(QUIET, frame_size=(192, 160), face_height=128.0)
    r = synth.SubjectRenderer(1, 0, config)
    still = r.render(synth.FrameState({}), noise=False).astype(np.float32)
    place = r.placement
    turned = r.backward_map(synth.FrameState({}, yaw_deg=25.0))
    row = turned[int(place.cy), :, 0]
    seen_at = float(np.interp(place.cx, row, np.arange(row.size)))  # where the middle shows
    assert abs(seen_at - (place.cx + 0.5 * place.h * np.sin(np.radians(25.0)))) < 0.5
    assert np.array_equal(
        r.render(synth.FrameState({}, yaw_deg=0.0, hand=0.0), noise=False), still.astype(np.uint8)
    )
    hand = r.render(synth.FrameState({}, hand=1.0), noise=False).astype(np.float32)
    mouth_y = int(place.cy + r.identity.mouth_y * place.h)
    eye_y = int(place.cy + r.identity.eye_y * place.h)
    cx, d = int(place.cx), 6
    mouth = np.abs(hand - still)[mouth_y - d : mouth_y + d, cx - 2 * d : cx + 2 * d]
    eyes = np.abs(hand - still)[eye_y - d : eye_y + d, :]
    assert mouth.mean() > 10.0, "the mouth is under the hand"
    assert eyes.max() == 0.0, "the eyes are not"
