"""`mfvan bench pipeline`'s parts that are not a timing: it moves every frame both ways,
reports them side by side, and draws its plots."""

import pytest

from mfvan.deploy.bench import pipeline as bp


@pytest.mark.slow
def test_the_transport_benchmark_runs_both_ways_over_both_transports():
    r = bp.bench_transport(frames=50, rounds=1)
    assert {(row["transport"], row["way"]) for row in r["rows"]} == {
        ("ipc", "bare"),
        ("ipc", "mfvan"),
        ("tcp", "bare"),
        ("tcp", "mfvan"),
    }
    assert all(row["fps"] > 0 and len(row["rounds_fps"]) == 1 for row in r["rows"])
    report = bp.format_pipeline_report(
        {"machine": "m", "cores": 2, "backend": "b", "transport": r, "runs": []}
    )
    assert "ipc: mfvan's protocol carries" in report and "tcp:" in report


def test_the_plots_are_written(tmp_path):
    rows = [
        {"transport": t, "way": w, "rounds_fps": [3000.0, 3500.0]}
        for t in ("ipc", "tcp")
        for w in ("bare", "mfvan")
    ]
    runs = [{"streams": 1, "latency_ms": [9.0, 12.0, 30.0], "arrival_s": [1.0, 5.0, 9.0]}]
    r = {"machine": "m", "backend": "onnxruntime", "transport": {"rows": rows}, "runs": runs}
    written = bp.plot_pipeline(r, tmp_path)
    assert len(written) == 3
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
