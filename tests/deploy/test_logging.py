"""The stages' log lines: each names its stage, stream and pid, as text or as JSON; other
libraries speak at WARNING unless asked."""

import json
import subprocess
import sys


def _ingest(tmp_path, *flags, env=None):
    """A short named synth:// camera through `mfvan ingest`: (pid, its stderr lines)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfvan", "ingest", "--source", "cam7=synth://?fps=50&seconds=0.3"]
        + ["--out", f"ipc://{tmp_path}/f.ipc", "--metrics-port", "0", *flags],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return proc.pid, err.strip().splitlines()


def test_every_line_names_stage_stream_and_pid(tmp_path):
    pid, lines = _ingest(tmp_path)
    assert lines and all(f" INFO ingest[{pid}] cam7 mfvan." in line for line in lines), lines


def test_json_lines_carry_the_same(tmp_path):
    pid, lines = _ingest(tmp_path, "--log-format", "json")
    records = [json.loads(line) for line in lines]
    assert records and all(
        (r["stage"], r["stream"], r["pid"]) == ("ingest", "cam7", pid) for r in records
    )
    assert all(r["time"].endswith("Z") and r["message"] for r in records)
    assert any("cam7: synth://" in r["message"] for r in records)


def test_other_libraries_log_at_warning_unless_asked():
    code = (
        "import logging; from mfvan.deploy.runtime import stage; stage.setup_logging('x'); "
        "logging.getLogger('onnxscript').info('lib-info'); "
        "logging.getLogger('onnxscript').warning('lib-warning'); "
        "logging.getLogger('mfvan.test').info('ours')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "lib-warning" in run.stderr and "ours" in run.stderr
    assert "lib-info" not in run.stderr
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MFVAN_LOG_LIBRARIES": "info"},
    )
    assert "lib-info" in run.stderr
