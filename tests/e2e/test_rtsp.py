"""Ingest from a real RTSP server (Debian's GStreamer RTSP server, in Debian's Python):
frames arrive over TCP, and a server that dies is reconnected to when it comes back."""

import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import av
import pytest
from helpers import free_port, scrape

from mfvan.deploy.bench.cameras import DEBIAN_PYTHON, SERVER, gst_rtsp_available
from mfvan.model.data import synth
from mfvan.stream.ingest import PyAVSource, Reconnecting

pytestmark = [
    pytest.mark.rtsp,
    pytest.mark.skipif(
        not gst_rtsp_available(),
        reason="GStreamer's RTSP server is not installed (apt: gir1.2-gst-rtsp-server-1.0 "
        "python3-gst-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad; .ci/run does it)",
    ),
]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """3 s of SynthME frames as H.264 in MP4, what the server streams."""
    path = tmp_path_factory.mktemp("rtsp") / "synth.mp4"
    stream = synth.SynthStream(replace(synth.CONFIGS["tiny"], fps=30.0), subject=1, seed=0)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=30)
        st.width, st.height, st.pix_fmt = 160, 192, "yuv420p"
        st.options = {"preset": "ultrafast", "g": "15"}
        for t in range(90):
            frame = av.VideoFrame.from_ndarray(stream.frame(t).image, format="rgb24")
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return path


def _serve(port: int, video: Path, *options: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [DEBIAN_PYTHON, str(SERVER), str(port), str(video), *options],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_frames_arrive_from_an_rtsp_server(video):
    port = free_port()
    server = _serve(port, video)
    try:
        frames = []
        for frame in PyAVSource(f"rtsp://127.0.0.1:{port}/test", timeout_s=5):
            frames.append(frame)
            if len(frames) == 45:
                break
    finally:
        server.kill()
        server.wait()
    assert len(frames) == 45
    assert frames[0].image.shape == (192, 160)
    assert all(b.t_capture >= a.t_capture for a, b in zip(frames, frames[1:], strict=False))


def test_a_dead_camera_is_reconnected_and_counted(video):
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/test"
    servers = [_serve(port, video)]
    errors = []
    source = Reconnecting(
        lambda: PyAVSource(url, timeout_s=2),
        live=True,
        backoff_s=(0.2, 1.0),
        on_reconnect=errors.append,
        max_attempts=30,
    )
    got = 0
    restarted = threading.Event()
    try:
        for _frame in source:
            got += 1
            if got == 20 and not restarted.is_set():
                servers[0].kill()  # the camera drops mid-stream ...
                servers[0].wait()
                restarted.set()
                threading.Timer(1.0, lambda: servers.append(_serve(port, video))).start()
            if got >= 140:  # ... and frames flow again after it comes back
                break
    finally:
        for s in servers:
            s.kill()
            s.wait()
    # (the served file is short: its end is a reconnection too)
    assert source.reconnects >= 1, "a reconnection counts once it delivers frames"
    assert len(errors) == source.attempts >= 1, "every attempt reported, with its reason"
    assert all(e is not None for e in errors)
    assert got >= 140


def test_after_a_5_s_outage_frames_come_within_a_second_of_the_server_being_back(video):
    """Before: the backoff kept growing while the camera was down, and a 5 s outage left
    about 7.6 s without input. Now the backoff is capped at 1 s."""
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/test"
    servers = [_serve(port, video)]
    back = []
    source = Reconnecting(lambda: PyAVSource(url, timeout_s=2), live=True)
    gap = None
    try:
        for got, _frame in enumerate(source, 1):
            if got == 20:
                servers[0].kill()
                servers[0].wait()
                time.sleep(5.0)  # the outage (frames buffered before it may still come)
                servers.append(_serve(port, video))
                back.append(time.monotonic())
            elif back and source.reconnects:
                gap = time.monotonic() - back[0]
                break
    finally:
        for s in servers:
            s.kill()
            s.wait()
    assert gap is not None and gap < 2.0, f"frames {gap} s after the server came back"
    print(f"outage: frames {gap:.2f} s after the server came back")


def _camera_mp4(path: Path, seed: int, moved_at: int | None = None) -> Path:
    """20 s of SynthME's camera (640 x 480, 50 fps, a micro-expression every 1.25 s) as
    H.264, what an IP camera would send; from frame `moved_at` on, the picture 200 px to
    the right."""
    import numpy as np

    from mfvan.deploy.runtime.synth_source import SynthSource

    url = f"synth://?fps=50&seed={seed}&micro=8&realtime=0&seconds=20&leave_every_s=0"
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=50)
        st.width, st.height, st.pix_fmt = 640, 480, "yuv420p"
        st.options = {"preset": "ultrafast", "crf": "18", "g": "25"}
        for i, frame in enumerate(SynthSource(url)):
            image = frame.image
            if moved_at is not None and i >= moved_at:
                image = np.roll(image, 200, axis=1)
            for packet in st.encode(av.VideoFrame.from_ndarray(image, format="gray")):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory):
    return _camera_mp4(tmp_path_factory.mktemp("rtsp") / "camera.mp4", seed=5)


@pytest.mark.slow
def test_the_pipeline_recognizes_an_rtsp_camera_and_resumes_after_it_dies(camera_video, tmp_path):
    import os
    import signal
    import sys
    import time

    from mfvan.stream import subscribe

    port = free_port()
    servers = [_serve(port, camera_video)]
    runtime, base = tmp_path / "rt", 19900 + os.getpid() % 300
    cmd = [
        sys.executable,
        "-m",
        "mfvan.deploy.cli",
        "run",
        "--source",
        f"rtsp://127.0.0.1:{port}/test",
        "--backend",
        "onnxruntime",
        "--runtime-dir",
        str(runtime),
        "--metrics-base-port",
        str(base),
    ]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=90) as sub:
            before = next(iter(sub), None)
            assert before is not None, "an event from the camera"
            servers[0].kill()  # the camera dies mid-stream ...
            servers[0].wait()
            time.sleep(2)
            servers.append(_serve(port, camera_video))  # ... and comes back
            back = time.time_ns()
            after = next((e for e in sub if e.times["t_capture"] > back), None)
        assert after is not None, "events resume after the camera comes back"
        assert scrape(base, "mfvan_reconnects_total") >= 1, "the reconnect was counted"
        assert scrape(base - 1, "mfvan_restarts_total") == 0, "no stage died"
        assert before.label in before.probs and after.stream == before.stream == "test"
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 0
    finally:
        if run.poll() is None:
            run.kill()
        for s in servers:
            s.kill()
            s.wait()


@pytest.fixture(scope="module")
def moved_video(tmp_path_factory):
    """`camera_video`'s like, whose picture moves 8 s in (a camera that restarted pointing
    elsewhere): the face must be found again."""
    return _camera_mp4(tmp_path_factory.mktemp("rtsp") / "moved.mp4", seed=6, moved_at=400)


@pytest.mark.slow
def test_an_rtsp_camera_whose_clock_jumps_back_is_spotted_on_after_the_jump(moved_video, tmp_path):
    """A camera whose RTP clock goes back 6 s, 8 s into its session as its picture moves
    (it restarted; its frames keep their pace): `mfvan run` counts the jump
    (`mfvan_clock_jumps_total`) and recognizes micro-expressions in the 6 s played again,
    past the spotter's warm-up (before: the tracker searched for the face again only once
    the media time came back to where it had been, 6 s without an event). The camera
    sends one every 1.25 s."""
    import contextlib
    import os
    import signal
    import sys
    import time

    from mfvan.stream import subscribe

    port = free_port()
    server = _serve(port, moved_video, "--jump", "8:6")  # as the picture moves
    runtime, base = tmp_path / "rt", 20300 + os.getpid() % 300
    cmd = [sys.executable, "-m", "mfvan.deploy.cli", "run", "--source",
           f"rtsp://127.0.0.1:{port}/test", "--backend", "onnxruntime",
           "--runtime-dir", str(runtime), "--metrics-base-port", str(base)]  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    replayed, jumps, log = [], 0.0, ""  # events in media time the camera played again
    try:
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=1.0) as sub:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and run.poll() is None and len(replayed) < 2:
                # the frame index runs on while media time went back: after the jump, an
                # apex's index is 6 s (300 frames) ahead of its media time; and of the
                # first session (media time 0..8 s, then 2..14 s; after the video ends at
                # 20 s, a new one, its media time continued past 14 s)
                replayed += [
                    e.media_apex / 1e9
                    for e in sub
                    if e.media_apex < 8e9 and e.apex - e.media_apex * 50 / 1e9 > 150
                ]
                with contextlib.suppress(OSError):
                    jumps = scrape(base - 1, "mfvan_clock_jumps_total")
        if not jumps or len(replayed) < 2:
            run.send_signal(signal.SIGTERM)
            log = run.communicate(timeout=30)[0][-4000:]
        assert jumps >= 1, f"the jump was seen and counted: {log}"
        # those of the 6 s the camera plays again (4.8 micro-expressions), past the warm-up
        assert len(replayed) >= 2, f"micro-expressions after the jump: {replayed} {log}"
        assert scrape(base - 1, "mfvan_restarts_total") == 0, "no stage died"
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 0
    finally:
        if run.poll() is None:
            run.kill()
        server.kill()
        server.wait()
