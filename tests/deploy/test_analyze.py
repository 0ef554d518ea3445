"""`mfvan analyze`: recorded videos through the live pipeline's parts give the live
pipeline's events; a file it cannot read is reported and the others go on."""

import json
import os
import subprocess
import sys

import pytest
from helpers import fill, ts_segment

from mfvan.deploy.bench.cameras import camera_file
from mfvan.stream import subscribe
from mfvan.stream.outputs.store import EventStore

MFVAN = [sys.executable, "-m", "mfvan"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two SynthME camera recordings (H.264, 60 fps, 8 s) and a file that is not a video."""
    folder = tmp_path_factory.mktemp("videos")
    made = [camera_file(folder / "made", seed, 60.0, seconds=8.0) for seed in (31, 32)]
    for i, path in enumerate(made):
        path.rename(folder / f"cam{i + 1}.mp4")
    (folder / "made").rmdir()
    (folder / "broken.mp4").write_bytes(os.urandom(30_000))
    return folder


def _key(event: dict) -> tuple:
    return event["stream"], event["onset"], event["apex"], event["offset"], event["label"]


@pytest.mark.slow
def test_analyze_gives_the_live_pipelines_events_and_skips_a_broken_file(videos, tmp_path):
    out = tmp_path / "events.jsonl"
    run = subprocess.run(
        [*MFVAN, "analyze", str(videos), "--out", str(out), "--db", str(tmp_path / "e.db")]
        + ["--clips", str(tmp_path / "clips")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1, "a file failed: the exit status says so"
    assert "broken.mp4" in run.stderr and "skipped" in run.stderr
    assert "2 of 3 files" in run.stderr
    analyzed = [json.loads(line) for line in out.read_text().splitlines()]
    assert {e["stream"] for e in analyzed} == {"cam1", "cam2"}
    assert all(os.path.getsize(e["clip"]) > 0 for e in analyzed)
    with EventStore(tmp_path / "e.db", readonly=True) as store:
        assert sorted(e["id"] for e in store.query()) == sorted(e["id"] for e in analyzed)
    # again: the same events, the same ids
    again = subprocess.run(
        [*MFVAN, "analyze", str(videos / "cam1.mp4"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    first = [e for e in analyzed if e["stream"] == "cam1"]
    repeat = [json.loads(line) for line in again.stdout.splitlines()]
    assert [(e["id"], *_key(e)) for e in repeat] == [(e["id"], *_key(e)) for e in first]

    # the live pipeline on the same files
    runtime = tmp_path / "rt"
    live = subprocess.Popen(
        [*MFVAN, "run", "--backend", "onnxruntime", "--runtime-dir", str(runtime)]
        + ["--source", f"cam1={videos / 'cam1.mp4'}", "--source", f"cam2={videos / 'cam2.mp4'}"]
        + ["--metrics-base-port", str(19900 + os.getpid() % 50)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    events = []
    try:
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=1.0) as sub:
            while live.poll() is None:
                events += [e.as_dict() for e in sub]
        assert live.wait(timeout=60) == 0
    finally:
        if live.poll() is None:
            live.kill()
    assert sorted(map(_key, events)) == sorted(map(_key, analyzed)), (
        "the same intervals and labels as the live pipeline"
    )
    # and the same fields: one Event, made by one Classifier from one kind of Pair (before:
    # live events lacked `amplitude`, which analyze's had); analyze adds where it read them
    fields = {frozenset(e) for e in events}
    assert fields == {frozenset(e) - {"source"} for e in repeat}, "every event alike"
    assert {"amplitude", "spot_score", "region", "face", "times"} <= set(events[0])
    assert set(events[0]["times"]) == set(repeat[0]["times"])
    assert len(analyzed) >= 4


@pytest.mark.slow
def test_analyze_on_a_full_disk_reports_it_and_still_writes_its_events(
    videos, tmp_path, small_disk
):
    """The store's disk is full: analyze says so in one line, writes `--out` all the same,
    and its exit status says a file's events were not kept. (Before: a traceback, and
    `--out` never written.)"""
    EventStore(small_disk / "e.db").close()
    fill(small_disk)
    out = tmp_path / "events.jsonl"
    run = subprocess.run(
        [*MFVAN, "analyze", str(videos / "cam1.mp4"), "--out", str(out)]
        + ["--db", str(small_disk / "e.db"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 1 and "could not be kept" in run.stderr, run.stderr
    assert "1 of 1 files" in run.stderr and "kept in" not in run.stderr.splitlines()[-2]
    assert out.read_text().count("\n") > 0, "the events are written all the same"


def _audio_only(path):
    """An MP4 with one AAC audio stream and no video."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        samples = np.zeros((1, 8000), np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        out.mux(stream.encode(None))
    return path


def test_analyze_reports_a_fifo_an_audio_file_and_garbage_in_one_line_each(tmp_path):
    """A FIFO named `.mp4` is not read (before: analyze hung on it), an audio-only file
    has "no video stream" (before: "tuple index out of range"), garbage says what FFmpeg
    says without its raw errno; the summary counts the files given."""
    os.mkfifo(tmp_path / "pipe.mp4")
    _audio_only(tmp_path / "voice.mp4")
    (tmp_path / "noise.mp4").write_bytes(os.urandom(20_000))
    run = subprocess.run(
        [*MFVAN, "analyze", str(tmp_path / "pipe.mp4"), str(tmp_path / "voice.mp4")]
        + [str(tmp_path / "noise.mp4"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "pipe.mp4: not a regular file" in run.stderr
    assert "voice.mp4: cannot open it: it has no video stream" in run.stderr
    assert "noise.mp4: cannot open it: Invalid data" in run.stderr
    assert "Errno" not in run.stderr and "0 of 3 files" in run.stderr, run.stderr


def _analyzed(path, tmp_path) -> tuple[list[dict], str]:
    out = tmp_path / f"{path.stem}.jsonl"
    run = subprocess.run(
        [*MFVAN, "analyze", str(path), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in out.read_text().splitlines()], run.stderr


@pytest.mark.slow
def test_two_joined_recordings_lose_no_micro_expression_of_the_second(tmp_path):
    """Two TS segments concatenated (a camera that restarted, recordings joined): the
    media time jumps back to 0 at the join. The second segment's micro-expressions are
    all found as in the segment alone (before: 4 of its 14, the tracker waiting for the
    first segment's media time to come back), the jump is said, and the summary counts
    30 s of video (before: 0.3 min, the second segment's end)."""
    first = ts_segment(tmp_path / "a.ts", 41)
    second = ts_segment(tmp_path / "b.ts", 42)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    alone, _ = _analyzed(second, tmp_path)
    together, err = _analyzed(joined, tmp_path)
    assert len(alone) >= 3, "the segment has micro-expressions to find"
    n_first = 15 * 60
    after = [e["onset"] - n_first for e in together if e["onset"] >= n_first]
    same = [e for e in alone if any(abs(e["onset"] - o) <= 3 for o in after)]
    assert len(same) >= len(alone) - 1, (after, [e["onset"] for e in alone])
    assert "media time jumped 1 time" in err, err
    assert "0.5 min of video" in err, err
