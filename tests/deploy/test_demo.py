"""`mfvan demo`'s closing score on its two-face camera: each event counts against its own
face's ground truth, found by the face square it carries."""

from types import SimpleNamespace

from mfvan.deploy.commands import demo
from mfvan.deploy.runtime.synth_source import SynthSource


def _events(source, swap: bool):
    """One event per micro-expression of either face, on that face's square (or on the
    other face's, `swap`), labelled right, plus one on the wall."""
    times = {"t_recognize": 2_000_000, "t_apex": 1_000_000, "t_capture": 1_000_000}
    out = []
    for face, layer in enumerate(source.scene.layers):
        for e in layer.stream.expressions_until(1000):
            if e.kind != "micro" or e.offset >= 1000:
                continue
            x, y, w, h = source.scene_boxes(e.apex)[1 - face if swap else face]
            square = [x + 5, y + 5, w - 10, h - 10]
            label = e.label3 or "others"
            out.append(SimpleNamespace(face=square, apex=e.apex, onset=e.onset, offset=e.offset,
                                       label=label, times=times))  # fmt: skip
    wall = SimpleNamespace(face=[0, 0, 10, 10], apex=5, onset=1, offset=9, label="positive",
                           times=times)  # fmt: skip
    return [*out, wall]


def test_the_demo_scores_each_event_against_its_own_faces_ground_truth():
    args = SimpleNamespace(config="morph-heldout", fps=50.0, seed=7, seconds=20.0, faces=2)
    source = SynthSource(demo._source(args))
    right = demo.score(_events(source, swap=False), args)
    micro = sum(
        e.kind == "micro" and e.offset < 1000
        for layer in source.scene.layers
        for e in layer.stream.expressions_until(1000)
    )
    assert f"micro-expressions shown: {micro} " in right and micro >= 10, right
    assert (
        f"spotted: {micro}; " in right
        and "other spots (macro-expressions, blinks, nothing): 1" in right
    )
    assert "2 morph-heldout faces" in right and "FP 1, FN 0" in right, right
    wrong = demo.score(_events(source, swap=True), args)
    # on the other face's square, none matches (an apex may fall inside one of the other
    # face's expressions by chance; its interval does not match it)
    assert f"(TP 0, FP {micro + 1}, FN {micro})" in wrong, wrong
