"""`mfvan run` as a user runs it: two named cameras' child processes (one spot process shared by
both), events of both to a subscriber, a crashed stage restarted, SIGTERM stopping
everything cleanly."""

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import scrape, ts_segment

from mfvan.stream import subscribe


@pytest.mark.slow
def test_run_of_two_cameras_publishes_restarts_a_crashed_stage_and_stops_on_sigterm(tmp_path):
    """The two cameras share one spot process (`--streams-per-spot 2`): killed, it is
    restarted, and the events of both cameras come again."""
    runtime = tmp_path / "rt"
    base = 19300 + os.getpid() % 500
    cmd = [
        sys.executable,
        "-m",
        "mfvan.deploy.cli",
        "run",
        "--source",
        "cam1=synth://?fps=50&seed=3&seconds=600",  # named cameras, one name a prefix of
        "--source",  # the other's: a subscription to cam1 must not get cam10's events
        "cam10=synth://?fps=50&seed=4&seconds=600",
        "--backend",
        "torch",
        "--runtime-dir",
        str(runtime),
        "--metrics-base-port",
        str(base),
        "--streams-per-spot",
        "2",
        "--db",
        str(tmp_path / "events.db"),
        "--with-clips",
    ]
    import socket

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # as systemd's Type=notify
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(120)  # READY=1 comes once every stage is ready (compiled)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert notify.recv(64) == b"READY=1", "systemd is told once every stage is ready"
        streams = {}  # two cameras, one recognizer: events of both
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=60) as sub:
            for event in sub:
                streams.setdefault(event.stream, event)
                if len(streams) == 2:
                    break
        assert set(streams) == {"cam1", "cam10"}, "events of both within a minute"
        assert all(e.label in e.probs for e in streams.values())
        with subscribe(f"ipc://{runtime}/events.ipc", stream="cam1", timeout_s=60) as sub:
            got = [e.stream for e in itertools.islice(sub, 3)]
        assert got == ["cam1"] * 3, "cam1's subscriber gets cam1's events only"
        # each camera's stages count its own frames
        assert scrape(base, "mfvan_frames_out_total") > 0
        assert scrape(base + 2, "mfvan_frames_out_total") > 0
        # kill the shared spot stage: the supervisor restarts it and counts it
        spot_pid = int(
            subprocess.run(
                ["pgrep", "-f", f"spot --in ipc://{runtime}/frames-0.ipc"],
                capture_output=True,
                text=True,
            ).stdout.split()[0]
        )
        killed = time.time_ns()
        os.kill(spot_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and scrape(base - 1, "mfvan_restarts_total") < 1:
            time.sleep(0.5)
        assert scrape(base - 1, "mfvan_restarts_total") == 1
        # ... and both cameras' events come again
        again = set()
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=60) as sub:
            for event in sub:
                if event.times["t_capture"] > killed:
                    again.add(event.stream)
                if len(again) == 2:
                    break
        assert again == {"cam1", "cam10"}, "the pipeline recovered, both streams"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert notify.recv(64) == b"STOPPING=1"
        assert not runtime.exists(), "its runtime folder is removed"
    except BaseException:
        # a failed run leaves no stage behind to load the tests after it: the supervisor
        # first (it would restart them), then its stages
        proc.kill()
        proc.wait(timeout=30)
        subprocess.run(["pkill", "-9", "-f", str(runtime)])
        raise
    log = proc.stdout.read()
    assert "restarting" in log and "SIGTERM" in log
    from mfvan.stream.outputs.store import EventStore

    with EventStore(tmp_path / "events.db", readonly=True) as store:  # --db: the recorder
        kept = store.query()
        assert {e["stream"] for e in kept} == {"cam1", "cam10"}
        assert {e["id"] for e in kept} >= {e.id for e in streams.values()}, "every event kept"
        names = [sorted(Path(f).name for f in e["snapshots"]) for e in kept]
        assert all(n == ["apex.png", "clip.mp4", "difference.png", "onset.png"] for n in names)
    assert all(e.clip is not None and len(e.clip) > 25 for e in streams.values()), "--with-clips"
    assert subprocess.run(["pgrep", "-f", str(runtime)], capture_output=True).stdout == b"", (
        "no stage is left running"
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            [
                "ingest",
                "--source",
                "/nonexistent/clip.mp4",
                "--out",
                "ipc://TMP/t1.ipc",
                "--metrics-port",
                "-1",
            ],
            "cannot open /nonexistent/clip.mp4",
        ),
        (
            [
                "ingest",
                "--source",
                "synth://?fps=fast",
                "--out",
                "ipc://TMP/t2.ipc",
                "--metrics-port",
                "-1",
            ],
            "bad synth:// URL",
        ),
        (
            [
                "recognize",
                "--in",
                "ipc://TMP/t3.ipc",
                "--out",
                "ipc://TMP/t4.ipc",
                "--weights",
                "CORRUPT",
                "--metrics-port",
                "-1",
            ],
            "mfvan recognize:",
        ),
        (
            [
                "recognize",
                "--in",
                "ipc://TMP/t3.ipc",
                "--out",
                "tcp://0.0.0.0:5999",
                "--metrics-port",
                "-1",
            ],
            "--insecure",
        ),
    ],
)
def test_bad_input_is_one_clear_line_not_a_traceback(argv, words, tmp_path):
    if "CORRUPT" in argv:
        bad = tmp_path / "w.safetensors"
        bad.write_bytes(b"not weights")
        argv = [str(bad) if a == "CORRUPT" else a for a in argv]
    argv = [a.replace("TMP", str(tmp_path)) for a in argv]  # per-test paths only
    r = subprocess.run(
        [sys.executable, "-m", "mfvan.deploy.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert words in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_live_file_whose_media_time_jumps_is_spotted_on_after_the_jump(tmp_path):
    """`mfvan run` of two TS recordings joined (the media time back to 0 at the join):
    the jump is counted on the run's /metrics (`mfvan_clock_jumps_total`) and events come
    from the second recording as well (before: the tracker waited for the first one's
    media time to come back)."""
    first = ts_segment(tmp_path / "a.ts", 41)
    second = ts_segment(tmp_path / "b.ts", 42)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    runtime, base = tmp_path / "rt", 19800 + os.getpid() % 100
    cmd = [sys.executable, "-m", "mfvan.deploy.cli", "run", "--source", f"cam={joined}"]
    cmd += ["--realtime", "--runtime-dir", str(runtime), "--metrics-base-port", str(base)]
    run = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    onsets, jumps = [], 0.0
    try:
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=0.5) as sub:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and run.poll() is None:
                onsets += [e.onset for e in sub]
                try:
                    jumps = scrape(base - 1, "mfvan_clock_jumps_total")
                except OSError:
                    pass
                if jumps and any(o >= 15 * 60 for o in onsets) and len(onsets) >= 3:
                    break
    finally:
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    assert jumps == 1, err[-3000:]
    assert any(o >= 15 * 60 for o in onsets), (onsets, err[-3000:])
