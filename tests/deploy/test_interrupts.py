"""Ctrl-C in a long command: it stops, says so in one line, and prints no traceback
(before: 116 lines from `mfvan synth`'s workers)."""

import signal
import subprocess
import sys
import time

import pytest

from mfvan.deploy.bench.cameras import camera_file

MFVAN = [sys.executable, "-m", "mfvan"]


def _interrupted(argv, after_s: float, ready: str | None = None) -> tuple[int, str]:
    """Run `mfvan argv`, send SIGINT (as Ctrl-C sends it to the whole process group)
    `after_s` after `ready` shows on stderr (or after start), and return (status,
    stderr)."""
    proc = subprocess.Popen(
        [*MFVAN, *argv], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    time.sleep(after_s)
    import os

    assert proc.poll() is None, f"mfvan {argv[0]} ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"mfvan {argv[0]} did not stop on Ctrl-C: {err[-2000:]}")
    return proc.returncode, err


@pytest.mark.slow
def test_ctrl_c_in_synth_analyze_and_spot_eval_is_one_line(tmp_path):
    code, err = _interrupted(
        ["synth", "--config", "standard", "--out", str(tmp_path / "set"), "--workers", "2"], 6.0
    )
    assert "Traceback" not in err and code == 130 and "interrupted" in err, (code, err[-3000:])
    video = camera_file(tmp_path / "videos", 3, 30.0, seconds=90.0)  # longer than the test
    code, err = _interrupted(["analyze", str(video), "--quiet"], 8.0)
    assert "Traceback" not in err and code == 130 and "interrupted" in err, (code, err[-3000:])
