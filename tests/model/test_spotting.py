"""Spotting on camera-like video: the realistic generator, camera encodings read back from
the files, spot-eval's folder layout, and one path from frame to spots, live and offline,
in media time."""

from __future__ import annotations

import csv
import multiprocessing
import threading
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.frame import PictureType

from mfvan.model.data import synth


def _quiet(config: synth.SynthConfig, **changes) -> synth.SynthConfig:
    """`config` with no expression, blink or gesture (noise, drift and light are kept)."""
    nuisances = replace(
        config.nuisances, blink_rate_hz=0.0, macro_per_segment=0, turn_rate_hz=0, hand_rate_hz=0
    )
    return replace(config, nuisances=nuisances, micro_per_segment=0, **changes)


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("preset", ["camera", "photo"])
def test_the_realistic_generator_is_deterministic_per_seed(preset):
    cfg = synth.CONFIGS[preset]
    frames = [synth.SynthStream(cfg, subject=2, seed=5).frame(37).image for _ in range(2)]
    other = synth.SynthStream(cfg, subject=2, seed=6).frame(37).image
    assert np.array_equal(frames[0], frames[1])
    assert np.abs(frames[0].astype(int) - other.astype(int)).mean() > 2


def test_photographic_identities_differ_and_held_out_ones_are_mirrored():
    from mfvan.model.data.synth_face import photo_identity

    tuning = [photo_identity(s, 0) for s in range(1, 9)]
    held_out = [photo_identity(s, 1) for s in range(1, 9)]
    assert not any(i.photo.mirror for i in tuning) and all(i.photo.mirror for i in held_out)
    assert len({(i.photo.scale_x, i.photo.gains) for i in tuning + held_out}) == 16


def test_camera_noise_is_spatially_correlated_and_grows_with_the_signal():
    cfg = replace(synth.CONFIGS["camera"], frame_size=(192, 160), face_height=128.0)
    renderer = synth.SubjectRenderer(1, 0, cfg)
    state = synth.FrameState({}, noise_std=2.0, noise_seed=(1,))
    noise = renderer.render(state).astype(np.float32) - renderer.render_exact(state)
    grey = noise.mean(axis=2)
    neighbour = np.corrcoef(grey[:, :-1].ravel(), grey[:, 1:].ravel())[0, 1]
    assert neighbour > 0.3, "demosaiced noise: neighbours correlate"
    exact = renderer.render_exact(state).mean(axis=2)
    dark, bright = noise.std(axis=2)[exact < 60], noise.std(axis=2)[exact > 160]
    assert grey[exact > 160].std() > 1.3 * grey[(exact < 60) & (exact > 5)].std()
    assert dark.size and bright.size


def test_a_photographic_identitys_action_unit_moves_the_region_it_should():
    """AU12 (lip-corner puller) on the photograph moves the photograph's own mouth corners
    up and out, and leaves the eyes and brows still."""
    from mfvan.model.data.synth_face import PHOTO_CENTRE, PHOTO_FACE_HEIGHT

    cfg = synth.CONFIGS["photo"]
    renderer = synth.SubjectRenderer(1, 0, cfg)  # seed 0: not mirrored
    field = renderer.fields[12]
    place, v = renderer.placement, renderer.identity.photo
    k = PHOTO_FACE_HEIGHT / place.h

    def frame_xy(photo_x, photo_y):  # a point of the photograph, in frame pixels
        return (
            place.cx + (photo_x - PHOTO_CENTRE[0]) * v.scale_x / k,
            place.cy + (photo_y - PHOTO_CENTRE[1]) * v.scale_y / k,
        )

    # measured on the photograph: mouth corners at (228, 275) and (298, 273), eyes at y 187
    for (px, py), outward in (((228, 275), -1), ((298, 273), 1)):
        x, y = (int(round(c)) for c in frame_xy(px, py))
        window = field[y - 6 : y + 7, x - 6 : x + 7]
        dx, dy = window[..., 0].mean(), window[..., 1].mean()
        assert np.hypot(dx, dy) > 0.6, "the corner moves with nearly the AU's full strength"
        assert dy < 0 and dx * outward > 0, "up and outwards"
    _, eye_y = frame_xy(262, 187)
    assert np.abs(field[: int(eye_y) + 5]).max() < 0.01, "nothing moves at or above the eyes"
    still = renderer.render(synth.FrameState({}), noise=False).astype(float)
    smile = renderer.render(synth.FrameState({12: 3.0}), noise=False).astype(float)
    diff = np.abs(smile - still).mean(axis=2)
    ys, _ = np.nonzero(diff > 4)
    assert ys.size and ys.min() > eye_y, "the image changes only below the eyes"


# ----------------------------------------------------------------------------- encodings


def _probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        keys = [i for i, p in enumerate(packets) if p.is_keyframe]
        seconds = len(packets) / float(stream.average_rate)
        codec = stream.codec_context.name
    with av.open(str(path)) as container:
        types = {PictureType(f.pict_type).name for f in container.decode(video=0)}
    return {
        "codec": codec,
        "keys": keys,
        "kbps": sum(p.size for p in packets) * 8 / seconds / 1000,
        "types": types,
    }


@pytest.mark.slow
def test_each_camera_encoding_is_applied_as_asked(tmp_path):
    """Codec, key frame every second exactly, no B-frames, quality falling with the CRF,
    and the constant bitrate near its target, all read back from the files."""
    cfg = replace(synth.CONFIGS["camera"], fps=50.0, frame_size=(192, 160), face_height=128.0)
    stream = synth.SynthStream(cfg, subject=1, seed=0)
    frames = [stream.frame(t).image for t in range(150)]  # 3 s
    sizes = {}
    for name in ("h264-crf18", "h264-crf23", "h264-crf28", "h265-crf23", "h264-cbr", "ffv1"):
        path = tmp_path / f"{name}.{synth.ENCODINGS[name].ext}"
        synth.encode_video(path, frames, 50.0, name, cfg.frame_size, gop_s=1.0)
        info = _probe(path)
        sizes[name] = info["kbps"]
        assert (
            info["codec"]
            == {"libx264": "h264", "libx265": "hevc", "ffv1": "ffv1"}[synth.ENCODINGS[name].codec]
        )
        if name == "ffv1":
            continue
        assert info["keys"] == [0, 50, 100], f"{name}: a key frame every 50 frames (1 s)"
        assert "B" not in info["types"], f"{name}: no B-frames, as cameras"
    assert sizes["h264-crf18"] > sizes["h264-crf23"] > sizes["h264-crf28"]
    target = 0.07 * 192 * 160 * 50 / 1000
    assert 0.6 * target < sizes["h264-cbr"] < 1.25 * target, (sizes["h264-cbr"], target)


def test_transcoding_keeps_the_masters_pixels(tmp_path):
    cfg = replace(synth.CONFIGS["tiny"], skin_detail=1.0, noise_model="camera")
    stream = synth.SynthStream(cfg, subject=1, seed=0)
    frames = [stream.frame(t).image for t in range(10)]
    synth.encode_video(tmp_path / "m.mkv", frames, cfg.fps, "ffv1", cfg.frame_size)
    synth.transcode(tmp_path / "m.mkv", tmp_path / "copy.mkv", "ffv1")

    def planes(path):
        with av.open(str(path)) as c:
            return [f.to_ndarray() for f in c.decode(video=0)]

    master, copy = planes(tmp_path / "m.mkv"), planes(tmp_path / "copy.mkv")
    assert len(master) == 10 and all(
        np.array_equal(a, b) for a, b in zip(master, copy, strict=True)
    )


# ----------------------------------------------------------------------------- spot-eval


def _layout(tmp_path, truth="video,kind,onset,apex,offset\nv.mp4,micro,1,2,3\n", video=True):
    folder = tmp_path / "set"
    folder.mkdir()
    if truth is not None:
        (folder / "ground_truth.csv").write_text(truth)
    if video:
        (folder / "v.mp4").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("file", "is not a folder"),
        ("no csv", "has no ground_truth.csv"),
        ("columns", "lacks the column(s) apex, offset"),
        ("numbers", "line 2: onset, apex, offset must be frame numbers"),
        ("video", "lacks the video v.mp4 named in ground_truth.csv"),
    ],
)
def test_spot_eval_refuses_another_layout_in_one_line_naming_what_is_missing(
    tmp_path, capsys, case, expected
):
    from mfvan.deploy.cli import main

    if case == "missing":
        data = tmp_path / "nowhere"
    elif case == "file":
        data = tmp_path / "a.txt"
        data.write_text("x")
    elif case == "no csv":
        data = _layout(tmp_path, truth=None)
    elif case == "columns":
        data = _layout(tmp_path, truth="video,kind,onset\nv.mp4,micro,1\n")
    elif case == "numbers":
        data = _layout(tmp_path, truth="video,kind,onset,apex,offset\nv.mp4,micro,a,b,c\n")
    else:
        data = _layout(tmp_path, video=False)
    assert main(["spot-eval", "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


def test_spot_eval_help_documents_the_folder_layout(capsys):
    from mfvan.deploy.cli import main

    with pytest.raises(SystemExit):
        main(["spot-eval", "--help"])
    text = capsys.readouterr().out
    assert "ground_truth.csv" in text and "nuisances.csv" in text and "onset, apex" in text


def test_the_bootstrap_interval_brackets_the_pooled_f1():
    from mfvan.model.spotting import CAUSES, pool_scores
    from mfvan.model.spotting_matrix import bootstrap_f1

    rng = np.random.default_rng(0)
    videos = []
    for i in range(20):
        tp = int(rng.integers(4, 9))
        videos.append(
            {
                "video": str(i),
                "fps": 200.0,
                "frames": 4000,
                "minutes": 1 / 3,
                "micro": 8,
                "tp": tp,
                "fp": int(rng.integers(0, 3)),
                "fp_causes": {},
                "apex_error_ms": [],
                "latency_ms": [],
                "rejected": {},
                "seconds": 1.0,
            }
        )
    low, high = bootstrap_f1(videos)
    f1 = pool_scores(
        [
            dict(
                v,
                fp_causes=dict.fromkeys(CAUSES, 0),
            )
            for v in videos
        ]
    )["f1"]
    assert low < f1 < high and high - low < 0.3
    assert bootstrap_f1(videos) == (low, high), "a fixed seed: the same interval"


# ----------------------------------------------------------------------------- spotting


def _write_set(folder: Path, cfg: synth.SynthConfig, seed: int = 1) -> Path:
    synth.write_long_videos(cfg, folder, seed=seed, workers=1, progress=False)
    return folder


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="not met yet: on this held-out face with a key frame every 0.5 s the spotter emits "
    "5 false spots in 12 s (3 start within 0.1 s after a key frame, 2 elsewhere: the codec's "
    "predicted pictures move the face's texture for about 150 ms after a key frame; bridging "
    "key frames did not remove them); see docs/spotting.md, step 1j",
)
def test_a_face_without_any_expression_in_h264_crf28_gives_no_spot(tmp_path):
    """Camera noise, head drift, light change and the heaviest camera encoding with a key
    frame every 0.5 s, on a photographic face, 12 s at 100 fps: the spotter must stay
    silent."""
    from mfvan.model.spotting import evaluate

    cfg = _quiet(
        synth.CONFIGS["photo"],
        fps=100.0,
        codec="h264-crf28",
        gop_s=0.5,
        long_seconds=12.0,
        long_videos=1,
    )
    folder = _write_set(tmp_path / "quiet", cfg)
    assert not list(csv.DictReader(open(folder / "ground_truth.csv"))), "nothing to find"
    result = evaluate(folder, tmp_path / "report")
    assert result["predicted"] == 0, result


@pytest.mark.slow
def test_the_spotter_neither_fires_on_head_turns_and_hands_nor_loses_the_face():
    """A held-out photographic face at 30 fps whose first 26 s hold three head turns
    (11-29 degrees of yaw) and three hands over the mouth (up to 1.2 s): no interval
    overlaps any of them, and the face stays in view from its first search to the end."""
    from mfvan.kernels.facespot import FaceSpotter

    cfg = replace(synth.CONFIGS["photo"], fps=30.0)
    stream = synth.SynthStream(cfg, subject=3, seed=7)
    n = int(26 * cfg.fps)
    gestures = [g for g in stream.gestures_until(n) if g.end < n]
    assert [g.kind for g in gestures].count("turn") == 3
    assert [g.kind for g in gestures].count("hand") == 3
    spotter, spots, unseen = FaceSpotter(), [], []
    for t in range(n):
        frame = stream.frame(t)
        spots += spotter.push(frame.image, t, frame.timestamp_ns)
        if not spotter.has_face and t >= 3:  # the first search's result is due at 0.1 s
            unseen.append(t)
    assert spots, "the micro-expressions between the gestures are found"
    on = [
        (i.onset, i.offset, g)
        for i in spots
        for g in gestures
        if i.onset <= g.end and g.start <= i.offset
    ]
    assert not on, on
    assert not unseen, f"the face was lost at frames {unseen}"


def _burn(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


@pytest.mark.slow
def test_spot_eval_and_the_live_spot_stage_find_the_same_intervals_even_under_load(tmp_path):
    """The same H.264 file through `mfvan spot-eval`'s path, and through ingest and the live
    spot stage over ZeroMQ (face detection in its worker thread) while both cores are
    busy: the same intervals, frame for frame, because both run in media time."""
    import json

    import zmq

    from mfvan.model.spotting import evaluate
    from mfvan.stream import protocol
    from mfvan.stream.ingest import PyAVSource
    from mfvan.stream.metrics import Metrics
    from mfvan.stream.stages import IngestConfig, SpotConfig, run_ingest, run_spot

    cfg = replace(synth.CONFIGS["photo"], fps=100.0, long_seconds=10.0, long_videos=1)
    folder = _write_set(tmp_path / "set", cfg)
    evaluate(folder, tmp_path / "report")
    report = json.loads((tmp_path / "report" / "spotting.json").read_text())
    (video,) = report["intervals"]
    offline = [(i["onset"], i["apex"], i["offset"]) for i in report["intervals"][video]]
    assert offline, "the video's micro-expressions give intervals to compare"

    ctx = zmq.Context()
    frames_at, pairs_at = f"ipc://{tmp_path}/frames", f"ipc://{tmp_path}/pairs"
    stop = threading.Event()
    metrics = Metrics("spot")
    pull = ctx.socket(zmq.PULL)
    pull.connect(pairs_at)
    burners = [
        multiprocessing.get_context("spawn").Process(target=_burn, args=(120,)) for _ in range(2)
    ]
    for b in burners:
        b.start()
    spot = threading.Thread(
        target=run_spot, args=(SpotConfig([frames_at], pairs_at), metrics, stop, ctx)
    )
    spot.start()
    source = PyAVSource(str(folder / video))
    ingest = threading.Thread(
        target=run_ingest,
        args=(source, IngestConfig("cam", frames_at, block=True), metrics, stop, ctx),
    )
    live = []
    try:
        time.sleep(0.3)
        ingest.start()
        ingest.join(timeout=300)
        deadline = time.time() + 20
        while time.time() < deadline and len(live) < len(offline):
            if pull.poll(500):
                msg = protocol.decode(protocol.recv_parts(pull))
                live.append((msg.fields["onset"], msg.fields["apex"], msg.fields["offset"]))
    finally:
        stop.set()
        spot.join(timeout=10)
        for b in burners:
            b.terminate()
        pull.close(linger=0)
        ctx.term()
    assert live == offline


def test_the_spotting_page_is_rewritten_and_its_design_notes_kept(tmp_path):
    from mfvan.model import spotting_matrix

    page = tmp_path / "spotting.md"
    notes = f"{spotting_matrix.NOTES_MARK}\n## Design notes\n\n1. Signal. measured by hand\n"
    page.write_text(f"# Spotting results\n\nan old table\n\n{notes}")
    spotting_matrix.write_docs({}, None, page, "mfvan spot-eval --sweep", "a machine")
    text = page.read_text()
    assert "an old table" not in text and "Produced by `mfvan spot-eval --sweep`" in text
    assert text.endswith(notes) and text.count(spotting_matrix.NOTES_MARK) == 1
    spotting_matrix.write_docs({}, None, page, "mfvan spot-eval --sweep", "a machine")
    assert page.read_text() == text, "written again: the same page"


def test_a_sweep_refuses_sets_an_older_generator_made_in_one_line(tmp_path, capsys):
    """A matrix folder whose masters another SynthME config rendered (before the realistic
    mode's gestures, say) is not scored as this version's: `mfvan spot-eval --sweep`
    exits 2 with one line naming the folder to delete, before rendering anything."""
    from mfvan.deploy.cli import main
    from mfvan.model import spotting_matrix

    seed = spotting_matrix.HELD_OUT_SEED
    for kind, _, fps in spotting_matrix.cells(seed, quick=True):
        master = tmp_path / "matrix" / f"seed{seed}" / f"{kind}-{fps:g}fps" / "master"
        master.mkdir(parents=True, exist_ok=True)
        (master / "ground_truth.csv").write_text("video,kind\n")
    assert main(["spot-eval", "--sweep", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"delete {tmp_path / 'matrix'} to" in err, err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("gop_bridge=false", ("gop_bridge", False)),
        ("gop_bridge=True", ("gop_bridge", True)),
        ("z=5.5", ("z", 5.5)),
        ("nope=1", "a spotter parameter"),
        ("gop_bridge=maybe", "true or false"),
        ("z=high", "takes a float"),
        ("z", "NAME=VALUE"),
    ],
)
def test_sweep_compare_takes_a_spotter_parameter_of_its_own_type(
    tmp_path, capsys, change, expected
):
    """`mfvan spot-eval --sweep --compare NAME=VALUE`: the headline cells evaluated with a
    spotter parameter changed too (a change's before and after); anything else is refused
    in one line naming what is wrong, before any set is rendered."""
    from mfvan.deploy.cli import main
    from mfvan.model.spotting_matrix import parse_change

    if isinstance(expected, tuple):
        assert parse_change(change) == expected
        return
    with pytest.raises(ValueError, match=expected):
        parse_change(change)
    argv = ["spot-eval", "--sweep", "--quick", "--compare", change, "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "matrix").exists(), "nothing rendered"


# ----------------------------------------------------------------------------- evaluation


def test_megc_interval_matching_by_hand():
    from mfvan.model.spotting import iou, match

    assert iou((0, 9), (0, 9)) == 1.0
    assert iou((0, 9), (5, 14)) == pytest.approx(5 / 15)
    assert iou((0, 9), (10, 19)) == 0.0
    # two predictions on one truth: only the better one matches
    assert match([(3, 12), (0, 9), (50, 60)], [(0, 10)]) == [(1, 0)]
    assert match([(0, 9)], [(0, 30)]) == [], "IoU 10/31 is under 0.5"


def test_score_pools_videos_and_sorts_false_positives_by_cause():
    from mfvan.model.spotting import Truth, VideoRun, score

    def run(name, intervals):
        return VideoRun(name, 100.0, 6000, intervals, np.zeros(1), np.zeros(1), {}, 1.0)

    def interval(onset, apex, offset):
        return {"onset": onset, "apex": apex, "offset": offset, "latency_ns": 50_000_000}

    truth = {
        "a": [Truth("a", "micro", 100, 110, 130), Truth("a", "blink", 500, 505, 515)],
        "b": [Truth("b", "micro", 200, 210, 240), Truth("b", "macro", 800, 900, 1000)],
    }
    runs = [
        run("a", [interval(100, 112, 128), interval(498, 505, 512)]),
        run("b", [interval(850, 880, 900), interval(3000, 3010, 3020)]),
    ]
    r = score(runs, truth)
    assert (r["tp"], r["fp"], r["micro"]) == (1, 3, 2)
    assert r["precision"] == pytest.approx(0.25) and r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    assert r["apex_error_ms"] == pytest.approx(20.0)
    assert r["fp_per_minute"] == pytest.approx(1.5)  # 3 in 2 minutes
    causes = r["fp_causes_per_minute"]
    assert (causes["blink"], causes["macro"], causes["other"]) == (0.5, 0.5, 0.5)


def test_each_spot_is_labelled_by_what_it_covers_and_every_spot_has_a_calibration_error():
    """`spot_labels`: a matched micro-expression's class (`others` without one), `none` on
    no micro-expression, nothing for a movement timed wrong; `chain`'s `ece_spotted` is
    measured on every labelled spot, its `ece` on the true positives alone."""
    from mfvan.model.spotting import Truth, VideoRun, chain, spot_labels

    def interval(onset, offset, probs):
        return {"onset": onset, "apex": onset + 5, "offset": offset, "probs": probs}

    classes = ["negative", "positive", "others", "none"]
    truth = {
        "a": [
            Truth("a", "micro", 100, 110, 130, "positive"),
            Truth("a", "micro", 300, 310, 330),
            Truth("a", "micro", 600, 610, 640, "negative"),
            Truth("a", "blink", 500, 505, 515),
        ]
    }
    sure, unsure = [0.0, 1.0, 0.0, 0.0], [0.1, 0.1, 0.2, 0.6]
    intervals = [
        interval(100, 128, sure),  # matches the positive
        interval(300, 331, [0.0, 0.0, 1.0, 0.0]),  # matches the unlabelled: others
        interval(498, 512, unsure),  # on the blink alone: none, right at 0.6
        interval(620, 700, sure),  # overlaps the negative, IoU under 0.5: neither
    ]
    run = VideoRun("a", 100.0, 6000, intervals, np.zeros(1), np.zeros(1), {}, 1.0)
    assert spot_labels(run, truth) == ["positive", "others", "none", None]
    pooled = chain([run], truth, classes, veto=False)["pooled"]
    assert pooled["ece"] == pytest.approx(0.0)  # two true positives, each right at 1.0
    assert pooled["ece_spotted"] == pytest.approx(0.4 / 3)  # and the spot on the blink


@pytest.mark.slow
def test_spot_eval_cli_on_the_tiny_set(tiny_set, tmp_path, capsys):
    import json

    from mfvan.deploy.cli import main

    out = tmp_path / "run"
    assert main(["spot-eval", "--data", str(tiny_set), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "F1" in printed
    assert "spot-then-recognize" in printed and "STRS" in printed, "the shipped recognizer ran"
    report = json.loads((out / "spotting.json").read_text())
    assert report["score"]["videos"] == 1 and len(report["per_video"]) == 1
    chain = report["score"]["str"]["pooled"]
    assert chain["tp"] + chain["fn"] == report["score"]["micro"]
    (intervals,) = report["intervals"].values()
    assert all("label" in i and "pair" not in i for i in intervals)
    assert list(out.glob("*.png")), "a trace per video"


@pytest.mark.slow
def test_the_spotters_own_true_positives_become_labelled_training_pairs(tiny_set, tmp_path):
    """`spotting.spotted_pairs`: what the live recognizer would receive for each spotted
    micro-expression (crops resized as its preprocessing does, the spot stage's flow),
    labelled with the ground truth it matched; the spotter's runs are cached."""
    from mfvan.model.spotting import load_truth, spotted_pairs

    classes = ("negative", "positive", "surprise")
    pairs = spotted_pairs(tiny_set / "long", classes, 32, tmp_path, workers=1)
    truth = [t for ts in load_truth(tiny_set / "long").values() for t in ts if t.kind == "micro"]
    labelled = [t for t in truth if t.label in classes]
    assert 1 <= len(pairs) <= len(labelled)
    assert pairs.onset.shape == (len(pairs), 32, 32, 1) and pairs.onset.dtype == np.uint8
    assert pairs.motion.shape == (len(pairs), 128, 128, 2) and pairs.motion.dtype == np.float16
    for name, label in zip(pairs.names, pairs.labels, strict=True):
        video, onset = name.split("@")
        hit = min(labelled, key=lambda t: abs(t.onset - int(onset)))
        assert classes[label] == hit.label and hit.video == video
    assert not pairs.jittered.any() and list(tmp_path.glob("runs-long-*.pkl"))
    again = spotted_pairs(tiny_set / "long", classes, 32, tmp_path, workers=1)
    assert np.array_equal(again.motion, pairs.motion), "the cached runs give the same pairs"


@pytest.mark.slow
def test_the_gestures_evaluation_compares_the_same_faces_with_and_without_them(capsys):
    """`mfvan spot-eval --gestures`: three conditions on the same faces and expressions;
    only the gesture conditions have gestures."""
    from mfvan.deploy.cli import main
    from mfvan.model.gesture_eval import CONDITIONS

    assert main(["spot-eval", "--gestures", "--gesture-seconds", "10"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()]
    rows = {r[0].strip(): [c.strip() for c in r[1:]] for r in rows if len(r) == 7}
    with_, off, without = (rows[c] for c in CONDITIONS)
    assert int(with_[0]) == int(off[0]) > 0 and int(without[0]) == 0, rows
    assert with_[1] == off[1] == without[1], "the same micro-expressions in all three"
