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


@pytest.mark.slow
@pytest.mark.rtsp
def test_the_end_to_end_run_takes_h264_cameras_over_rtsp(tmp_path):
    """The default kind of camera: H.264 files of SynthME's camera served by GStreamer's
    RTSP server. One short run: frames flow from the server through every stage (each
    stage's CPU is measured), and the report says what the cameras were."""
    from mfvan.deploy.bench import cameras

    if not cameras.gst_rtsp_available():
        pytest.skip("GStreamer's RTSP server is not installed (.ci/run installs it)")
    from helpers import free_port

    r = bp.bench_pipeline(
        bp.PipelineRun(
            fps=30.0,
            warmup_s=3.0,
            window_s=8.0,
            rounds=0,
            source="rtsp",
            counts=[2],
            streams_per_spot=2,
            data=tmp_path,
            base_port=free_port() + 2,
        )
    )
    (run,) = r["runs"]
    assert run["streams"] == 2 and run["streams_per_spot"] == 2
    assert run["min_fps"] > 0, "both cameras' frames reached ingest over RTSP"
    assert {"ingest", "spot", "recognize"} <= set(run["cores"])
    video = next(tmp_path.glob("camera-seed11-*.mp4"))
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 640, 480)
    report = bp.format_pipeline_report(r)
    assert "over RTSP" in report and "2 stream(s) per spot process" in report


def _run(streams, kept_up, p99):
    return {
        "streams": streams,
        "fps": 30.0,
        "window_s": 20.0,
        "events": 10,
        "p50_ms": 20.0,
        "p99_ms": p99,
        "max_ms": p99,
        "apex_p50_ms": 90.0,
        "min_fps": 29.9 if kept_up else 25.0,
        "dropped": 0 if kept_up else 40,
        "restarts": 0,
        "kept_up": kept_up,
        "sustained": kept_up and p99 <= bp.GOAL_P99_MS,
        "cores": {"ingest": 0.1 * streams, "spot": 0.3 * streams, "recognize": 0.05},
    }


def test_the_report_tells_streams_kept_up_with_from_streams_within_the_latency_goal():
    runs = [_run(2, True, 30.0), _run(4, True, 80.0), _run(6, False, 400.0)]
    r = {"machine": "m", "cores": 2, "backend": "b", "source": "rtsp", "runs": runs}
    last = bp.format_pipeline_report(r).splitlines()[-1]
    assert "keeps up with (no drops, >= 98% of the rate): 4;" in last
    assert last.endswith("sustains (p99 <= 50 ms as well): 2")


def test_transport_only_starts_no_camera(tmp_path):
    r = bp.bench_pipeline(
        bp.PipelineRun(max_streams=0, rounds=0, source="rtsp", data=tmp_path / "cams")
    )
    assert r["runs"] == [] and r["transport"] is None
    assert not (tmp_path / "cams").exists(), "no camera file made, no RTSP server started"
