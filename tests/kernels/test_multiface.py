"""Several faces per camera (`FaceTracker(max_faces=...)`, `FaceSpotter(max_faces=...)`) on
SynthME scenes (`mfvan.model.data.scenes`): every face in view is tracked with its own id,
keeps it through another passing in front, and is spotted on its own."""

from dataclasses import replace

import pytest

from mfvan.model.data import scenes, synth

FPS = 30.0


def _run(name: str, seconds: float, max_faces: int = 4, alone: bool = False):
    """Spot a morph scene (held-out portraits) at 30 fps: (intervals by track id, each
    frame's `match_faces`, the scene stream, each face's intervals spotted alone)."""
    from mfvan.kernels.facespot import FaceSpotter

    config = replace(synth.CONFIGS["morph-heldout"], fps=FPS)
    scene = scenes.SceneStream(config, scenes.layouts(seconds)[name], seed=5)
    spots = FaceSpotter(max_faces=max_faces)
    found: dict[int, list] = {}
    per_frame = []
    for t in range(scene.frames()):
        frame = scene.frame(t)
        for it in spots.push(frame.image, t, frame.timestamp_ns):
            found.setdefault(it.face, []).append(it)
        per_frame.append(scenes.match_faces(spots.faces(), scene.boxes(t)))
    solo = []
    if alone:
        for i in range(len(scene.scene.people)):
            single = FaceSpotter()
            stream = scene.alone(i)
            solo.append(
                [
                    it
                    for t in range(scene.frames())
                    for it in single.push(stream.frame(t).image, t, stream.frame(t).timestamp_ns)
                ]
            )
    return found, per_frame, scene, solo


def _hits(intervals, truth) -> int:
    """Intervals matching a ground-truth micro-expression at IoU >= 0.5 (each once)."""
    used, hits = set(), 0
    for it in intervals:
        for k, e in enumerate(truth):
            inter = min(it.offset, e.offset) - max(it.onset, e.onset) + 1
            union = max(it.offset, e.offset) - min(it.onset, e.onset) + 1
            if k not in used and inter / union >= 0.5:
                used.add(k)
                hits += 1
                break
    return hits


@pytest.mark.slow
def test_two_faces_side_by_side_are_each_spotted_as_they_are_alone():
    """An interview: two faces that never cross keep one id each for the whole video, and
    each face's spots are its own micro-expressions, as many as the same face gives alone."""
    found, per_frame, scene, solo = _run("two-still", 10.0, alone=True)
    report = scenes.id_report(per_frame, 2)
    assert all(r["switches"] == 0 and r["tracked"] > 0.9 * len(per_frame) for r in report), report
    n = scene.frames()
    for face in range(2):
        track = per_frame[-1][face]
        truth = [e for e in scene.expressions_until(face, n) if e.kind == "micro"]
        other = [e for e in scene.expressions_until(1 - face, n) if e.kind == "micro"]
        mine = found.get(track, [])
        hits = _hits(mine, truth)
        assert hits >= _hits(solo[face], truth) - 1, (face, mine, truth, solo[face])
        assert hits >= 2, (face, mine, truth)
        # no spot of this face is the other face's micro-expression (its motion leaking
        # into this face's crop)
        leaked = [it for it in mine if _hits([it], other) and not _hits([it], truth)]
        assert not leaked, (face, leaked)


@pytest.mark.slow
def test_a_face_that_passes_behind_another_keeps_its_id():
    """Two faces swap sides, the smaller hidden behind the larger for about half a second;
    a third stays in its corner. After the crossing every face has the id it had before on
    at least 95% of the frames it is tracked on."""
    found, per_frame, scene, _ = _run("crossing", 8.0)
    report = scenes.id_report(per_frame, 3)
    for r in report:
        assert r["tracked"] > 0.6 * len(per_frame), report
        assert r["kept"] >= 0.95, report
    assert report[2]["switches"] == 0, "the still face in the corner never changes id"
    ids = {i for m in per_frame for i in m.values()}
    assert len(ids) == 3, f"three faces, three ids: {sorted(ids)}"


def test_one_face_mode_keeps_the_largest_face_only():
    """`max_faces` 1 (the default) is the one-face tracker: of two faces, the larger."""
    from mfvan.kernels.faces import FaceTracker, to_grey

    config = replace(synth.CONFIGS["morph-heldout"], fps=FPS)
    scene = scenes.SceneStream(config, scenes.layouts(4.0)["two-still"], seed=5)
    one, four = FaceTracker(size=64), FaceTracker(size=64, params=_params(4))
    for t in range(3):
        grey = to_grey(scene.frame(t).image)
        one.update(grey, t * 33_333_333)
        four.update(grey, t * 33_333_333)
    (face,) = one.in_view
    assert abs(face.geometry.cx - 170) < 40, "the larger face, on the left"
    assert sorted(round(t.geometry.cx, -2) for t in four.in_view) == [200, 500]
    assert [t.id for t in four.in_view] == [1, 2]
    with pytest.raises(ValueError, match="max_faces"):
        FaceTracker(params=_params(0))


def _params(n: int):
    from mfvan.kernels.faces import TrackerParams

    return TrackerParams(max_faces=n)


@pytest.mark.slow
def test_scene_evaluation_scores_each_face_against_itself_alone(tmp_path):
    """`mfvan spot-eval --scenes`' one video: encoded as a camera would, spotted by the live
    path, each face's spots scored against its own ground truth, and the same face alone."""
    from mfvan.model import scene_eval

    config = replace(synth.CONFIGS["morph-heldout"], fps=FPS, codec=scene_eval.CODEC)
    layout = scenes.layouts(8.0)["two-still"]
    result = scene_eval.run_video(config, layout, seed=5, work=tmp_path)
    assert len(result["faces"]) == 2 and result["frames"] == 240
    for face in result["faces"]:
        for condition in ("scene", "alone"):
            tp, fp, truths = face[condition]
            assert truths >= 2 and 0 <= tp <= truths and fp >= 0
    # every face's spots were told apart and given to it (right or wrong is the
    # evaluation's figure, not this test's)
    assert all(sum(f["scene"][:2]) > 0 for f in result["faces"]) and result["orphans"] == 0
    assert [r["switches"] for r in result["ids"]] == [0, 0]
    row = scene_eval._row("two-still", FPS, [result])
    assert "two-still, 30 fps" in scene_eval.format_rows([row])
