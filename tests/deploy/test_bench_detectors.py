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


@pytest.mark.slow
def test_the_faces_bench_times_one_face_and_two_on_the_same_scene(capsys):
    """`mfvan bench spotter --faces`: the two-face scene and its first person alone, each
    timed whole on the frames where every person is tracked, and the second face's share."""
    from mfvan.deploy.cli import main

    assert main(["bench", "spotter", "--faces", "--fps", "30", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line[:24].strip(): int(line[24:32]) for line in out.splitlines() if "max_faces" in line}
    assert set(rows) == {"1 face, max_faces 1", "1 face, max_faces 4", "2 faces, max_faces 4"}
    assert all(frames >= 40 for frames in rows.values()), rows  # of 60: the faces are found
    assert "the second face costs" in out and "x the first" in out
