"""`mfvan bench detectors`: every detector runs on the same scene frames and is scored on
recall by size, eye error and time."""

import pytest


@pytest.mark.slow
def test_the_detector_bench_scores_each_detector_on_the_same_faces():
    from mfvan.deploy.bench import detectors

    r = detectors.bench_detectors(per_size=2)
    rows = r["rows"]
    assert set(rows) == {"haar", "haar (as configured)", "dlib HOG", "dlib HOG x2"}
    configured = rows["haar (as configured)"]["recall"]
    # its smallest face is 20% of 480 px: none of 48 px, every one of 260 px
    assert configured[48] == 0.0 and configured[260] == 1.0
    for name in ("dlib HOG", "dlib HOG x2"):  # dlib is a dev dependency: here it runs
        assert rows[name]["recall"][150] == 1.0 and rows[name]["eyes"] > 0, rows[name]
        assert rows[name]["eye_error_p50"] < 10.0, "eyes within a tenth of their distance"
    report = detectors.format_detectors_report(r)
    assert "| dlib HOG x2 |" in report and "ms per frame" in report
