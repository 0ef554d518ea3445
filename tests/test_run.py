"""`mfvan run` as a user runs it: child processes, events to a subscriber, a crashed
stage restarted, SIGTERM stopping everything cleanly."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from mfvan.stream import subscribe


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


@pytest.mark.slow
def test_run_publishes_events_restarts_a_crashed_stage_and_stops_on_sigterm(tmp_path):
    runtime = tmp_path / "rt"
    base = 19300 + os.getpid() % 500
    cmd = [
        sys.executable, "-m", "mfvan.deploy.cli", "run",
        "--source", "synth://?fps=50&seed=3&seconds=40",
        "--backend", "torch", "--runtime-dir", str(runtime),
        "--metrics-base-port", str(base),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=60) as sub:
            event = next(iter(sub), None)
        assert event is not None, "an event within a minute"
        assert event.stream == "synth-3-1" and event.label in event.probs
        # kill the spot stage: the supervisor restarts it and counts it
        spot_pid = int(
            subprocess.run(
                ["pgrep", "-f", f"spot --in ipc://{runtime}/frames-0.ipc"],
                capture_output=True,
                text=True,
            ).stdout.split()[0]
        )
        os.kill(spot_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _metric(base - 1, "mfvan_restarts_total") < 1:
            time.sleep(0.5)
        assert _metric(base - 1, "mfvan_restarts_total") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert "restarting" in log and "SIGTERM" in log
    assert subprocess.run(["pgrep", "-f", str(runtime)], capture_output=True).stdout == b"", (
        "no stage is left running"
    )
