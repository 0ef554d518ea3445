"""The three stages over real ZeroMQ sockets (loopback TCP), in threads of one process:
SynthME frames in, recognition events out to a subscriber."""

import datetime
import json
import threading
import time
import uuid
from dataclasses import replace

import numpy as np
import pytest
import zmq

import mfvan
from mfvan.deploy.inference.backends import TorchBackend
from mfvan.kernels.faces import to_grey
from mfvan.kernels.spotter import SpotterParams
from mfvan.model.data import synth
from mfvan.stream import protocol, subscribe
from mfvan.stream.ingest import Frame
from mfvan.stream.messages import Pair
from mfvan.stream.metrics import Metrics
from mfvan.stream.recognizer import Batcher, Classifier, RecognizeConfig, run_recognize
from mfvan.stream.stages import IngestConfig, SpotConfig, run_ingest, run_spot


def _endpoints(tmp_path, n):
    """ipc:// endpoints in the test's folder: no port to race for."""
    return [f"ipc://{tmp_path}/{i}.ipc" for i in range(n)]


def synth_frames(seconds: float, fps: float = 200.0, subject: int = 1, seed: int = 3, **config):
    quiet = replace(synth.Nuisances(), blink_rate_hz=0.0, macro_per_segment=0)
    cfg = replace(synth.CONFIGS["standard"], fps=fps, nuisances=quiet, **config)
    stream = synth.SynthStream(cfg, subject=subject, seed=seed)
    frames = []
    for t in range(int(seconds * fps)):
        f = stream.frame(t)
        frames.append(Frame(index=t, t_capture=f.timestamp_ns, image=to_grey(f.image)))
    micro = [e for e in stream.expressions_until(len(frames)) if e.kind == "micro"]
    return frames, micro


@pytest.mark.slow
def test_frames_become_events_across_three_stages(tmp_path, demo_weights):
    frames, micro = synth_frames(6.0)
    params = SpotterParams()  # the spotter starts after its first reference and warm-up
    ready = 200 * (params.min_lag_s + params.warmup_s)
    expected = [e for e in micro if e.onset > ready and e.offset < len(frames)]
    assert expected, "the stream holds micro-expressions to find"
    model, meta = demo_weights
    a, b, c = _endpoints(tmp_path, 3)
    stop = threading.Event()
    m_ingest, m_spot, m_rec = Metrics("ingest"), Metrics("spot"), Metrics("recognize")
    threads = [
        threading.Thread(
            target=run_recognize,
            args=(
                RecognizeConfig([b], c),
                Classifier(TorchBackend(model), meta["classes"], "demo"),
                m_rec,
                stop,
            ),
        ),
        threading.Thread(target=run_spot, args=(SpotConfig([a], b), m_spot, stop)),
    ]
    for t in threads:
        t.start()
    events = []
    with mfvan.subscribe(c, stream="cam1", timeout_s=30) as sub:  # the users' API
        # a slow joiner: the ingest thread starts once the subscription is up
        feeder = threading.Thread(
            target=run_ingest, args=(frames, IngestConfig("cam1", a, block=True), m_ingest, stop)
        )
        feeder.start()
        for event in sub:
            events.append(event)
            if len(events) == len(expected):
                break
    stop.set()
    for t in [*threads, feeder]:
        t.join(timeout=30)
    assert len(events) == len(expected)
    for event, truth in zip(events, expected, strict=True):
        assert abs(event.apex - truth.apex) <= 8
        assert set(event.probs) == set(meta["classes"]) and event.label in meta["classes"]
        assert sum(event.probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert event.confidence == max(event.probs.values()) == event.probs[event.label]
        assert event.fields["spot_score"] >= 1.0, "the spotter's own score, named as such"
        t = event.times
        assert t["t_apex"] <= t["t_capture"] <= t["t_ingest"] <= t["t_spot"] <= t["t_recognize"]
        assert event.crops == [], "no pixels unless asked"
        assert uuid.UUID(event.id).version == 7
        x, y, w, h = event.face  # the face square, in the frame
        height, width = frames[0].image.shape
        assert 0 < x + w / 2 < width and 0 < y + h / 2 < height and w == h >= 64
        d = event.as_dict()
        assert d["v"] == 2 and d["id"] == event.id and d["face"] == event.face
        assert d["apex_time"] == t["t_apex"] / 1e9 and d["apex_iso"].endswith("Z")
        apex = datetime.datetime.fromisoformat(d["apex_iso"].replace("Z", "+00:00"))
        assert abs(apex.timestamp() - d["apex_time"]) < 0.001
        assert json.loads(json.dumps(d)) == d, "what --json prints"
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids) and ids == sorted(ids), "unique, in time order"
    sent = m_ingest.frames_out.labels("ingest", "cam1")._value.get()
    assert sent == m_ingest.frames_in.labels("ingest", "cam1")._value.get() > 0
    assert m_ingest.dropped.labels("ingest", "cam1", "hwm")._value.get() == 0, "it waited"
    assert m_spot.spots.labels("cam1")._value.get() == len(events)


@pytest.mark.slow
def test_one_spot_stage_keeps_three_streams_apart(tmp_path):
    """Three cameras into one spot stage, as `mfvan run --streams-per-spot 3` runs them,
    their frames interleaved over real sockets: each stream's pairs are exactly those a
    `FaceSpotter` finds in that stream's frames alone, and carry its name (a tracker or
    spotter state shared between streams would move, add or lose intervals)."""
    from mfvan.kernels.facespot import FaceSpotter

    fps = 100.0
    streams = {
        f"cam{i}": synth_frames(8.0, fps, subject=i + 1, seed=21 + i, micro_per_segment=6)[0]
        for i in range(3)
    }
    alone = {}
    for name, frames in streams.items():
        spotter = FaceSpotter()
        alone[name] = [
            (it.onset, it.apex)
            for f in frames
            for it in spotter.push(f.image, f.index, f.t_capture)
        ]
    assert all(alone.values()), "every stream holds intervals to find"
    assert len({tuple(v) for v in alone.values()}) == 3, "and they differ between streams"
    *frames_in, pairs_out = _endpoints(tmp_path, 4)
    stop = threading.Event()
    m_spot = Metrics("spot")
    spot = threading.Thread(target=run_spot, args=(SpotConfig(frames_in, pairs_out), m_spot, stop))
    spot.start()
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.connect(pairs_out)
    feeders = [
        threading.Thread(
            target=run_ingest,
            args=(frames, IngestConfig(name, endpoint, block=True), Metrics("ingest"), stop),
        )
        for (name, frames), endpoint in zip(streams.items(), frames_in, strict=True)
    ]
    for t in feeders:
        t.start()
    got = {name: [] for name in streams}
    want = sum(len(v) for v in alone.values())
    try:
        while sum(len(v) for v in got.values()) < want and pull.poll(60_000):
            msg = protocol.recv(pull)
            got[msg.stream].append((msg.fields["onset"], msg.fields["apex"]))
        taken = lambda name: m_spot.frames_in.labels("spot", name)._value.get()  # noqa: E731
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(taken(n) < len(f) for n, f in streams.items()):
            time.sleep(0.1)
    finally:
        stop.set()
        for t in [spot, *feeders]:
            t.join(timeout=30)
        pull.close(linger=0)
    assert got == alone
    assert all(taken(name) == len(frames) for name, frames in streams.items()), "every frame"


@pytest.mark.slow
def test_the_shipped_weights_classify_clear_micro_expressions_of_a_stream_right(
    tmp_path, demo_weights
):
    """End to end, as a user runs it: frames of a SynthME stream no model was trained on
    (seed 11; the weights saw seed 0's clips) through the three stages, the recognizer on
    ONNX Runtime with the shipped weights, calibrated. Of the first five clear (peak 1.6-2
    px on a 256 px face, no blinks or macro-expressions) micro-expressions with a 3-class
    label, at least four are classified right."""
    from mfvan.deploy.inference.backends import Calibrated, load_backend
    from mfvan.model.weights import temperature

    fps = 100.0
    frames, micro = synth_frames(30.0, fps, subject=2, seed=11, micro_px=(1.6, 2.0))
    labelled = [e for e in micro if e.label3 and e.offset < len(frames) and e.onset > 0.7 * fps]
    assert len(labelled) >= 5, "the stream holds five labelled micro-expressions"
    clear = labelled[:5]
    frames = frames[: clear[-1].offset + int(0.6 * fps)]
    model, meta = demo_weights
    backend = Calibrated(load_backend("onnxruntime", model), temperature(meta))
    a, b, c = _endpoints(tmp_path, 3)
    stop = threading.Event()
    classifier = Classifier(backend, meta["classes"], meta["version"])
    threads = [
        threading.Thread(
            target=run_recognize,
            args=(RecognizeConfig([b], c), classifier, Metrics("recognize"), stop),
        ),
        threading.Thread(target=run_spot, args=(SpotConfig([a], b), Metrics("spot"), stop)),
    ]
    for t in threads:
        t.start()
    events = []
    with mfvan.subscribe(c, stream="cam1", timeout_s=20) as sub:
        feeder = threading.Thread(
            target=run_ingest,
            args=(frames, IngestConfig("cam1", a, block=True), Metrics("ingest"), stop),
        )
        feeder.start()
        events = list(sub)  # until 20 s without an event
    stop.set()
    for t in [*threads, feeder]:
        t.join(timeout=30)
    right = []
    for e in clear:
        hit = [ev for ev in events if e.onset <= ev.apex <= e.offset]
        right.append(bool(hit) and hit[0].label == e.label3)
    assert sum(right) >= 4, [
        (e.label3, [ev.label for ev in events if e.onset <= ev.apex <= e.offset]) for e in clear
    ]


def test_batcher_releases_full_batches_at_once_and_partial_ones_after_the_wait():
    b = Batcher(max_batch=3, max_wait_s=0.5)
    assert not b.due(0.0)
    for i in range(4):
        b.add(i, now=0.0)
    assert b.due(0.0) and b.take() == [0, 1, 2]
    assert not b.due(0.1) and b.wait_s(0.1) == pytest.approx(0.4)
    assert b.due(0.6) and b.take() == [3]
    with pytest.raises(ValueError):
        Batcher(0)


class Recognizer:
    """A recognizer stage in a thread with `classifier`, fed by `push`, publishing on
    `events`, its metrics in `metrics`; `close()` stops it."""

    def __init__(self, tmp_path, classifier, **options):
        a, self.events = _endpoints(tmp_path, 2)
        self.push = zmq.Context.instance().socket(zmq.PUSH)
        self.push.bind(a)
        self.stop = threading.Event()
        self.metrics = Metrics("recognize")
        self.thread = threading.Thread(
            target=run_recognize,
            args=(
                RecognizeConfig([a], self.events, **options),
                classifier,
                self.metrics,
                self.stop,
            ),
        )
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        self.push.close(linger=0)


def test_a_malformed_pair_is_dropped_and_counted_and_the_recognizer_goes_on(tmp_path, demo_weights):
    model, meta = demo_weights
    classifier = Classifier(TorchBackend(model), meta["classes"], "demo")
    rec = Recognizer(tmp_path, classifier, max_wait_s=0.0, with_crops=True)
    push, c, m = rec.push, rec.events, rec.metrics
    crop = np.full((128, 128), 90, np.uint8)
    try:
        with subscribe(c, timeout_s=10) as sub:
            for _ in range(100):  # until the subscriber is connected
                push.send_multipart([b"cam1", b"not a header"])
                protocol.send(
                    push,
                    "pair",
                    "cam1",
                    0,
                    [crop, crop],
                    onset=1,
                    apex=5,
                    offset=9,
                    t_apex=1,
                    t_capture=2,
                )
                try:
                    event = next(iter(sub))
                    break
                except StopIteration:
                    continue
    finally:
        rec.close()
    assert event.onset == 1 and event.apex == 5 and len(event.crops) == 2
    assert m.dropped.labels("recognize", "", "malformed")._value.get() >= 1


class InTurn:
    """A backend whose answers the test chooses: each row of probabilities in turn, for
    every pair of a batch."""

    name = "in-turn"

    def __init__(self, *rows):
        self.rows = rows
        self.calls = 0

    def __call__(self, onset, apex, flow=None):
        row = self.rows[self.calls % len(self.rows)]
        self.calls += 1
        return np.array([row] * len(onset), np.float32)


def _published(tmp_path, classifier: Classifier, count: int):
    """Pairs sent one at a time to a real recognizer stage until a subscriber has `count`
    events (or 40 pairs went): (those events, the stage's metrics)."""
    rec = Recognizer(tmp_path, classifier, max_batch=1)
    crop = np.full((128, 128), 90, np.uint8)
    events = []
    try:
        with subscribe(rec.events, timeout_s=2) as sub:
            for seq in range(40):
                protocol.send(
                    rec.push, "pair", "cam1", seq, [crop, crop], onset=1, apex=5, offset=9
                )
                try:
                    events.append(next(iter(sub)))
                except StopIteration:
                    continue
                if len(events) == count:
                    break
    finally:
        rec.close()
    return events, rec.metrics


def test_unsure_events_are_held_back_and_counted(tmp_path):
    """--min-confidence: an event whose class probability is under it is not published,
    and is counted in mfvan_events_unsure_total."""
    classes = ["negative", "positive", "surprise"]
    classifier = Classifier(
        InTurn([0.9, 0.05, 0.05], [0.4, 0.35, 0.25]), classes, "test", min_confidence=0.5
    )
    events, m = _published(tmp_path, classifier, 3)
    assert len(events) == 3 and all(e.confidence == pytest.approx(0.9) for e in events)
    assert all(e.label == "negative" for e in events)
    calls = classifier.backend.calls  # sure, unsure, sure, ...: every other one held back
    assert m.unsure.labels("cam1")._value.get() == calls // 2 >= 2


@pytest.mark.slow
def test_synth_camera_frames_truth_and_bounded_memory():
    from mfvan.deploy.runtime.synth_source import SynthSource, parse

    assert parse("synth://?fps=50&seed=2&size=800x600")["size"] == (800, 600)
    with pytest.raises(ValueError, match="bad synth:// URL"):
        parse("synth://?fps=fast")
    source = SynthSource("synth://?fps=25&seed=3&realtime=0&seconds=30&leave_every_s=10")
    frames = list(source)
    assert len(frames) == 750 and frames[0].image.shape == (480, 640)
    assert [f.t_capture for f in frames[:3]] == [0, 40_000_000, 80_000_000]
    kinds = {f.truth["kind"] for f in frames if f.truth is not None}
    assert "micro" in kinds
    away = [f for f in frames if source.position(f.index / 25) is None]
    assert away and all(f.truth is None for f in away), "no face, no truth"
    assert np.std(away[0].image) < 10, "the face has left the frame"
    timeline = source.stream.timeline
    assert all(e.offset >= 750 - 6 * 25 for e in timeline.expressions), "past events forgotten"


@pytest.mark.slow
def test_a_two_face_synth_camera_gives_each_face_its_own_truth_and_track():
    """`synth://?faces=2` (what `make demo` shows): two people side by side, each with its
    own expressions in the frame's truth, and the tracker follows both with two ids, each
    inside its own face's box."""
    from mfvan.deploy.runtime.synth_source import SynthSource, parse
    from mfvan.kernels.faces import FaceTracker, TrackerParams

    with pytest.raises(ValueError, match="faces must be 1, 2 or 3"):
        parse("synth://?faces=5")
    source = SynthSource("synth://?fps=25&seed=7&realtime=0&seconds=12&faces=2")
    frames = list(source)
    assert len(frames) == 300 and frames[0].image.shape == (480, 640)
    faces = {k for f in frames if f.truth for k in f.truth["faces"]}
    assert faces == {"0", "1"}, "both faces show expressions, each in its own truth"
    own = [source.scene.layers[i].stream.expressions_until(300) for i in (0, 1)]
    assert own[0] != own[1], "each face is its own subject"
    tracker = FaceTracker(params=TrackerParams(max_faces=4))
    for f in frames[:50]:
        tracker.update(f.image, f.t_media)
    boxes = source.scene_boxes(49)
    inside = {}
    for track in tracker.in_view:
        cx, cy = track.geometry.cx, track.geometry.cy
        inside[track.id] = [
            i
            for i, (bx, by, bw, bh) in enumerate(boxes)
            if bx <= cx <= bx + bw and by <= cy <= by + bh
        ]
    assert sorted(v for ids in inside.values() for v in ids) == [0, 1], inside


def _fuzz_messages(rng, n=60):
    """Random and truncated multipart messages, some built from real headers."""
    good = protocol.encode("frame", "cam1", 0, [np.zeros((16, 16), np.uint8)], t_capture=1)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(
                [rng.bytes(int(rng.integers(0, 40))) for _ in range(int(rng.integers(1, 4)))]
            )
        elif kind == 1:
            out.append([bytes(f) for f in good[: int(rng.integers(1, 2))]])
        elif kind == 2:
            header = bytearray(good[1])
            cut = int(rng.integers(1, len(header)))
            out.append([good[0], bytes(header[:cut]), bytes(good[2])])
        else:
            out.append([good[0], good[1], bytes(good[2])[: int(rng.integers(0, 63))]])
    return out


def _dropped(m, stage):
    return sum(
        m.dropped.labels(stage, "", r)._value.get() for r in ("malformed", "version", "schema")
    )


@pytest.mark.parametrize("stage", ["spot", "recognize"])
def test_fuzzed_inputs_are_dropped_and_counted_and_valid_messages_still_pass(
    stage, tmp_path, demo_weights
):
    rng = np.random.default_rng(0)
    a, b = _endpoints(tmp_path, 2)
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.bind(a)
    stop = threading.Event()
    m = Metrics(stage)
    if stage == "spot":
        target, args = run_spot, (SpotConfig([a], b), m, stop)
        valid = ("frame", [np.full((64, 64), 100, np.uint8)])
    else:
        model, meta = demo_weights
        target = run_recognize
        classifier = Classifier(TorchBackend(model), meta["classes"], "demo")
        args = (RecognizeConfig([a], b), classifier, m, stop)
        crop = np.full((128, 128), 90, np.uint8)
        valid = ("pair", [crop, crop])
    thread = threading.Thread(target=target, args=args)
    thread.start()
    fuzz = _fuzz_messages(rng)
    try:
        for i, frames in enumerate(fuzz):
            push.send_multipart(frames)
            if i % 10 == 0:
                protocol.send(
                    push,
                    valid[0],
                    "cam1",
                    i,
                    valid[1],
                    wait_ms=5000,
                    onset=0,
                    apex=1,
                    offset=2,
                    t_apex=1,
                    t_capture=1,
                )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            m.frames_in.labels(stage, "cam1")._value.get() < 6 or _dropped(m, stage) < len(fuzz)
        ):
            time.sleep(0.1)  # until the stage has taken every message
    finally:
        stop.set()
        thread.join(timeout=20)
        push.close(linger=0)
    assert not thread.is_alive(), "the stage stopped cleanly"
    assert _dropped(m, stage) == len(fuzz), "every fuzzed message dropped and counted"
    assert m.frames_in.labels(stage, "cam1")._value.get() == 6, "the valid ones got through"


@pytest.mark.slow
def test_clips_run_from_before_the_onset_to_the_confirming_frame_and_reach_the_store(tmp_path):
    """`mfvan run --with-clips`: the spot stage's pairs carry their face crops, the
    recognizer passes them on with the event, the store writes them as MP4."""
    from mfvan.stream.messages import Event
    from mfvan.stream.outputs.store import EventStore
    from mfvan.stream.stages import CLIP_MARGIN_S, SpotStage

    fps = 100.0
    frames, _ = synth_frames(6.0, fps, seed=5)
    stage = SpotStage(Metrics("spot"), clip_s=CLIP_MARGIN_S)
    pairs, crops = [], {}
    for f in frames:
        msg = protocol.decode(
            Frame(stream="cam1", seq=f.index, image=f.image, t_media=f.t_capture).encode()
        )
        for pair in stage.handle(msg, now=0.0):
            pairs.append((f.index, pair))
        crop = stage.tracks["cam1"].spots.crop
        crops[f.index] = None if crop is None else crop.copy()
    assert pairs, "the stream holds micro-expressions"
    for confirmed, pair in pairs:
        # from 0.5 s of media time before the onset (a frame either way: the source's
        # timestamps are rounded to the ns) to the frame that confirmed it
        first = confirmed - len(pair.clip) + 1
        assert abs(first - (pair.onset - int(CLIP_MARGIN_S * fps))) <= 1
        assert pair.clip.shape[1:] == (128, 128)
        assert (pair.clip[-1] == crops[confirmed]).all() and (pair.clip[0] == crops[first]).all()
        # over the wire, through the recognizer's event, to the store
        sent = Pair.from_message(protocol.decode(pair.encode()))
        assert (sent.clip == pair.clip).all() and sent.clip_fps == pair.clip_fps
    confirmed, pair = pairs[0]
    made = Event.of(
        pair, id="01a23c3e-770c-7b23-a333-f541985970fd", label="x", probs={"x": 1.0},
        confidence=1.0, model="m", onset_crop=pair.onset_crop, apex_crop=pair.apex_crop,
        clip=pair.clip,
    )  # fmt: skip
    event = Event.from_message(protocol.decode(made.encode()))
    assert len(event.crops) == 2 and event.clip.shape == pair.clip.shape
    with EventStore(tmp_path / "e.db") as store:
        store.add([event])
        (kept,) = store.query()
    clip = next(f for f in kept["snapshots"] if f.endswith("clip.mp4"))
    import av

    with av.open(clip) as video:
        stream = video.streams.video[0]
        assert (stream.width, stream.height) == (128, 128)
        assert sum(1 for _ in video.decode(stream)) == len(pair.clip)
        assert abs(float(stream.average_rate) - fps) < 1.0, "played at the camera's rate"


def test_a_clip_of_the_wrong_shape_is_refused():
    crop = np.zeros((64, 64), np.uint8)
    flow = np.zeros((64, 64, 2), np.float16)
    fields = {"onset": 1, "apex": 2, "offset": 3}
    ok = protocol.encode("pair", "c", 0, [crop, crop, flow, np.zeros((5, 64, 64), np.uint8)],
                         **fields)  # fmt: skip
    assert Pair.from_message(protocol.decode(ok)).clip.shape == (5, 64, 64)
    for bad in (np.zeros((5, 32, 32), np.uint8), np.zeros((5, 64, 64), np.float32),
                np.zeros((0, 64, 64), np.uint8)):  # fmt: skip
        with pytest.raises(protocol.Malformed, match="clip is"):
            protocol.encode("pair", "c", 0, [crop, crop, flow, bad], **fields)


@pytest.mark.parametrize("publish_vetoed", [False, True])
def test_a_vetoed_spot_is_counted_and_published_only_when_asked(tmp_path, publish_vetoed):
    """A model with a 'none' class refuses what it finds most likely not a
    micro-expression: counted in mfvan_spots_vetoed_total{reason="none"}, not published
    (with --publish-vetoed: published, labelled 'none')."""
    classes = ["negative", "positive", "surprise", "none"]
    classifier = Classifier(
        InTurn([0.05, 0.1, 0.05, 0.8], [0.1, 0.7, 0.1, 0.1]),
        classes,
        "test",
        publish_vetoed=publish_vetoed,
    )
    events, m = _published(tmp_path, classifier, 4)
    labels = [e.label for e in events]
    calls = classifier.backend.calls
    assert m.vetoed.labels("cam1", "none")._value.get() == (calls + 1) // 2 >= 2
    if publish_vetoed:
        assert set(labels) == {"none", "positive"}
    else:
        assert labels == ["positive"] * 4


@pytest.mark.slow
def test_two_faces_in_one_camera_give_pairs_and_events_of_each_face_with_its_id(tmp_path):
    """An interview scene (two faces, SynthME's held-out portraits) through a spot stage:
    each pair carries its face's track id and square, the two faces' pairs fall on their
    own sides of the frame, the ids survive the wire, the event's JSON and the store's
    query, and a subscriber asking for one face gets that face's events only."""
    from mfvan.model.data import scenes
    from mfvan.stream.messages import Event, Status, uuid7
    from mfvan.stream.outputs.store import EventStore
    from mfvan.stream.stages import SpotStage

    config = replace(synth.CONFIGS["morph-heldout"], fps=30.0)
    scene = scenes.SceneStream(config, scenes.layouts(10.0)["two-still"], seed=5)
    stage = SpotStage(Metrics("spot"), max_faces=4)
    pairs = []
    for t in range(scene.frames()):
        f = scene.frame(t)
        msg = Frame(stream="cam1", seq=t, image=to_grey(f.image), t_media=f.timestamp_ns)
        pairs += stage.handle(protocol.decode(msg.encode()), now=0.0)
    spots = stage.tracks["cam1"].spots
    assert [face for face, _ in spots.faces()] == [1, 2]
    assert stage.metrics.faces.labels("cam1")._value.get() == 2
    by_face = {}
    for pair in pairs:
        sent = Pair.from_message(protocol.decode(pair.encode()))
        assert sent.face_id == pair.face_id and sent.face == pair.face
        by_face.setdefault(pair.face_id, []).append(pair)
    assert sorted(by_face) == [1, 2], "both faces were spotted"
    left, right = (scene.boxes(0)[i][0] for i in (0, 1))  # the scene's faces 0 and 1
    for face, mine in by_face.items():
        x = {1: left[0] + left[2] / 2, 2: right[0] + right[2] / 2}[face]  # id 1: the larger
        assert all(abs(p.face[0] + p.face[2] / 2 - x) < 40 for p in mine), (face, mine)
    events = [
        Event.of(p, id=uuid7(), label="x", probs={"x": 1.0}, confidence=1.0, model="m", seq=i)
        for i, p in enumerate(pairs)
    ]
    assert all(e.as_dict()["face_id"] == e.face_id for e in events)
    with EventStore(tmp_path / "e.db") as store:
        store.add(events)
        assert {e["face_id"] for e in store.query(face=2)} == {2}
        assert len(store.query(face=2)) == len(by_face[2])
    # a subscriber for face 2 over a real socket
    endpoint = f"ipc://{tmp_path}/events.ipc"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(endpoint)
    got = []
    try:
        with subscribe(endpoint, "cam1", timeout_s=1.0, face=2) as sub:
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                for e in events:
                    e.send(pub)
                got = list(sub)
    finally:
        pub.close(linger=0)
    assert got and {e.face_id for e in got} == {2}
    # the web view's status lists every face; a malformed list is refused
    status = Status(stream="cam1", state="tracking", signal=[], t_status=time.time_ns(),
                    faces=[[i, *box] for i, box in spots.faces()])  # fmt: skip
    back = Status.from_message(protocol.decode(status.encode()))
    assert [f[0] for f in back.faces] == [1, 2]
    bad = Status(stream="cam1", state="tracking", signal=[], t_status=1, faces=[[0, 1, 2, 3, 4]])
    with pytest.raises(protocol.Malformed):
        Status.from_message(protocol.decode(bad.encode()))
