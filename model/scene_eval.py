"""Spotting several faces per camera, scored per face (`mfvan spot-eval --scenes`).

Each cell is a SynthME scene layout (`data.scenes.layouts`: two faces side by side, a face
entering and leaving, two faces crossing with a third still) at a frame rate, encoded as
a camera would (H.264 CRF 23, a key frame a second, no B-frames), on held-out seeds and
held-out portraits (`morph-heldout`: morphs nothing was trained or tuned on). The scene's
video and each of its faces rendered alone (the same person doing the same things, in
a frame of its own) are encoded alike, decoded with PyAV and spotted by the live path
(`FaceSpotter`: `max_faces` 4 for the scene, 1 alone).

Scoring, per face, on the frames where it is in view (at least half of it) and has been
for 1.5 s (`WARM_S`: the next search for new faces and the spotter's warm-up), in the scene
and alone alike: a micro-expression counts when all its frames are, a spot when its apex
is. A tracked face is the scene face it is matched to on that frame
(`scenes.match_faces`: the nearest centre, within half a face); a spot belongs to the
scene face its track was on at the spot's apex frame, and is right when it matches one
of that face's micro-expressions at IoU >= 0.5 (MEGC; `spotting.match`). A spot whose
track was on no face then is a false spot of none. F1 is pooled per condition (scene,
alone) over every face of every video of the cell. Identity: per face, its switches (its
track id changed between two tracked frames) and the share of its tracked frames that kept
its first id (`scenes.id_report`).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .data import scenes, synth
from .spotting import match
from .strs import spotting_f1

CODEC = "h264-crf23"
SEEDS = (11, 12)  # held out: no parameter of the spotter or the tracker was tuned on them


def _encode(path: Path, frames, fps: float, size: tuple[int, int]) -> None:
    synth.encode_video(path, frames, fps, CODEC, size, gop_s=1.0)


def _spot(path: Path, max_faces: int):
    """(intervals as (face id, onset, apex, offset), each frame's faces) of one video."""
    import av

    from mfvan.kernels.facespot import FaceSpotter, decoded_grey
    from mfvan.kernels.media import decode

    spots = FaceSpotter(max_faces=max_faces)
    intervals, faces = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for index, frame, media, key in decode(container, stream):
            for it in spots.push(decoded_grey(frame), index, media, key):
                intervals.append((it.face, it.onset, it.apex, it.offset))
            faces.append(spots.faces())
    return intervals, faces


WARM_S = 1.5  # s in view before a micro-expression is scored: a search for new faces (1 s)
# and the spotter's warm-up (0.4 s)


def _counts(
    spotted: list[tuple[int, int, int]], truth: list[synth.Expression], scored: np.ndarray
) -> tuple[int, int, int]:
    """(true, false, ground truths) of one face's spots (onset, apex, offset) against its
    micro-expressions, on the frames `scored` says (a micro-expression whose every frame is
    scored; a spot whose apex is)."""
    micro = [
        (e.onset, e.offset)
        for e in truth
        if e.kind == "micro" and scored[max(e.onset, 0) : e.offset + 1].all()
    ]
    spots = [(o, f) for o, a, f in spotted if scored[min(a, len(scored) - 1)]]
    tp = len(match(spots, micro))
    return tp, len(spots) - tp, len(micro)


def scored_frames(boxes: list, face: int, fps: float) -> np.ndarray:
    """The frames a face is scored on (`boxes`: `SceneStream.boxes` of every frame): in
    view (at least half of it) since `WARM_S` before, so that a face that enters, or comes
    out from behind another, is scored alike in the scene and alone."""
    n = len(boxes)
    shown = np.array([b[face][1] >= 0.5 for b in boxes])
    warm = int(round(WARM_S * fps))
    # shown on every frame of the last `warm` as well (from the video's start: alone too)
    return np.array([shown[max(0, t - warm) : t + 1].all() for t in range(n)])


def run_video(config: synth.SynthConfig, layout: scenes.Scene, seed: int, work: Path) -> dict:
    """One scene video and its faces alone: per face (true, false, truths) in the scene
    and alone, and the id report."""
    scene = scenes.SceneStream(config, layout, seed=seed)
    n, fps = scene.frames(), config.fps
    video = work / f"{layout.name}-{seed}.mp4"
    _encode(video, (scene.frame(t).image for t in range(n)), fps, layout.frame_size)
    intervals, faces = _spot(video, max_faces=4)
    boxes = [scene.boxes(t) for t in range(n)]  # once a frame: each costs frame-sized masks
    per_frame = [scenes.match_faces(f, boxes[t]) for t, f in enumerate(faces)]
    out = {"video": video.name, "frames": n, "faces": []}
    for i in range(len(layout.people)):
        truth = scene.expressions_until(i, n)
        scored = scored_frames(boxes, i, fps)
        mine = [
            (onset, apex, offset)
            for face, onset, apex, offset in intervals
            if per_frame[min(apex, n - 1)].get(i) == face
        ]
        alone = scene.alone(i)
        path = work / f"{layout.name}-{seed}-face{i}.mp4"
        _encode(path, (alone.frame(t).image for t in range(n)), fps, alone.config.frame_size)
        solo, _ = _spot(path, max_faces=1)
        out["faces"].append(
            {
                "scene": _counts(mine, truth, scored),
                "alone": _counts([(o, a, f) for _, o, a, f in solo], truth, scored),
            }
        )
    out["orphans"] = sum(  # spots whose track was on no scene face at their apex
        1 for face, _, apex, _ in intervals if face not in per_frame[min(apex, n - 1)].values()
    )
    out["ids"] = scenes.id_report(per_frame, len(layout.people))
    return out


def evaluate(
    fps_list=(30.0,), seconds: float = 20.0, seeds=SEEDS, identities: str = "morph-heldout"
) -> list[dict]:
    """Every layout at every rate: pooled per-face F1 in the scene and alone, false spots
    of no face, identity switches and kept shares (one row per cell)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="mfvan-scenes-") as tmp:
        for fps in fps_list:
            config = replace(synth.CONFIGS[identities], fps=fps, codec=CODEC)
            for name, layout in scenes.layouts(seconds).items():
                videos = [run_video(config, layout, seed, Path(tmp)) for seed in seeds]
                rows.append(_row(name, fps, videos))
    return rows


def _row(name: str, fps: float, videos: list[dict]) -> dict:
    pooled = {}
    for condition in ("scene", "alone"):
        tp, fp, n = (sum(f[condition][k] for v in videos for f in v["faces"]) for k in range(3))
        pooled[condition] = {"tp": tp, "fp": fp, "micro": n, "f1": spotting_f1(tp, fp, n - tp)}
    ids = [r for v in videos for r in v["ids"]]
    return {
        "cell": f"{name}, {fps:g} fps",
        "videos": len(videos),
        "faces": len(ids),
        **pooled,
        "orphans": sum(v["orphans"] for v in videos),
        "switches": [r["switches"] for r in ids],
        "kept": float(np.min([r["kept"] for r in ids])) if ids else 0.0,
    }


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of `evaluate`'s rows."""
    lines = [
        "| cell | videos | faces | micro | F1 in the scene | F1 alone | difference "
        "| spots of no face | id switches per face | least share of frames with the first id |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, a = r["scene"], r["alone"]
        lines.append(
            f"| {r['cell']} | {r['videos']} | {r['faces']} | {s['micro']} "
            f"| {s['f1']:.3f} ({s['tp']} right, {s['fp']} false) "
            f"| {a['f1']:.3f} ({a['tp']} right, {a['fp']} false) | {s['f1'] - a['f1']:+.3f} "
            f"| {r['orphans']} | {' '.join(map(str, r['switches']))} | {r['kept']:.3f} |"
        )
    return "\n".join(lines)


def write_docs(rows: list[dict], path: Path, command: str, machine: str) -> None:
    """The results as docs/multiface.md: how they are measured, then the table."""
    doc = (__doc__ or "").split("\n\n", 1)[1].strip()
    text = [
        "# Several faces per camera",
        "",
        f"Produced by `{command}` on {machine}.",
        "",
        "## How it is measured",
        "",
        doc,
        "",
        "## Results",
        "",
        format_rows(rows),
        "",
        "## The tracker",
        "",
        _tracker_doc(),
        "",
    ]
    Path(path).write_text("\n".join(text))


def _tracker_doc() -> str:
    """How several faces are tracked: `FaceTracker`'s own paragraph on it."""
    import inspect

    from mfvan.kernels.faces import FaceTracker

    doc = inspect.getdoc(FaceTracker) or ""
    return next(p for p in doc.split("\n\n") if p.startswith("**Several faces**"))
