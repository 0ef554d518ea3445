"""What head turns and hands over the mouth cost the spotter (`mfvan spot-eval --gestures`).

SynthME's realistic mode turns heads and raises hands (docs/synthme.md, "Gestures"). Each
face here is a long stream of the `photo` preset at 30 fps, spotted frame by frame by the
live path (`FaceSpotter`, one face) on its raw frames (no codec: what is measured is the
gestures' own cost, not a key frame's), three ways: with the gestures, with them and the
spotter's noise hold on (`SpotterParams.settle_holds_noise`), and with the gestures
switched off (the same expressions, blinks and drift: the gestures come from their own
seed). Faces: subjects 1-4, seeds 5-8, neither the spotter's tuning seed (0) nor the
matrix's held-out one (1). Scored as `mfvan spot-eval` scores (MEGC: IoU >= 0.5, each
micro-expression matched once); a false spot over a gesture is counted apart, as is a
frame after the first search where the face was not in view.
"""

from __future__ import annotations

from dataclasses import replace

from .data import synth
from .spotting import match

FACES = ((1, 5), (2, 6), (3, 7), (4, 8))  # (subject, seed)
FPS = 30.0
CONDITIONS = ("with gestures", "with gestures, noise hold on", "without gestures")


def _config(condition: str) -> synth.SynthConfig:
    config = replace(synth.CONFIGS["photo"], fps=FPS)
    if condition == "without gestures":
        calm = replace(config.nuisances, turn_rate_hz=0.0, hand_rate_hz=0.0)
        config = replace(config, nuisances=calm)
    return config


def spot_face(condition: str, subject: int, seed: int, seconds: float) -> dict:
    """One face's counts under one condition (a worker's task)."""
    from mfvan.kernels.facespot import FaceSpotter
    from mfvan.kernels.spotter import SpotterParams

    stream = synth.SynthStream(_config(condition), subject=subject, seed=seed)
    params = SpotterParams(settle_holds_noise=condition == "with gestures, noise hold on")
    spotter, spots, unseen = FaceSpotter(params=params), [], 0
    n = int(round(seconds * FPS))
    for t in range(n):
        frame = stream.frame(t)
        spots += [(i.onset, i.offset) for i in spotter.push(frame.image, t, frame.timestamp_ns)]
        unseen += t >= 3 and not spotter.has_face  # the first search's result is due at 0.1 s
    micro = [(e.onset, e.offset) for e in stream.expressions_until(n) if e.kind == "micro"]
    micro = [m for m in micro if m[1] < n]
    gestures = [(g.start, g.end) for g in stream.gestures_until(n) if g.end < n]
    hits = match(spots, micro)
    right = {i for i, _ in hits}
    false = [p for i, p in enumerate(spots) if i not in right]
    on_gesture = sum(any(a <= g1 and g0 <= b for g0, g1 in gestures) for a, b in false)
    return {
        "condition": condition,
        "micro": len(micro),
        "tp": len(hits),
        "fp": len(false),
        "fp_gestures": on_gesture,
        "gestures": len(gestures),
        "unseen": unseen,
    }


def evaluate(seconds: float = 40.0, workers: int | None = None) -> list[dict]:
    """Each condition's counts, pooled over `FACES`."""
    tasks = [(c, subject, seed, seconds) for c in CONDITIONS for subject, seed in FACES]
    with synth._pool(workers) as pool:
        per_face = list(pool.map(spot_face, *zip(*tasks, strict=True)))
    rows = []
    for condition in CONDITIONS:
        mine = [r for r in per_face if r["condition"] == condition]
        row = {k: sum(r[k] for r in mine) for k in mine[0] if k != "condition"}
        row["condition"] = condition
        row["f1"] = 2 * row["tp"] / max(row["micro"] + row["tp"] + row["fp"], 1)
        rows.append(row)
    return rows


def format_rows(rows: list[dict], seconds: float) -> str:
    lines = [
        f"{len(FACES)} photographic faces (subjects 1-4, seeds 5-8), {seconds:g} s each at "
        f"{FPS:g} fps, raw frames, spotted by FaceSpotter",
        "| condition | gestures | micro | found | false (over a gesture) | F1 "
        "| frames without the face |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['condition']} | {r['gestures']} | {r['micro']} | {r['tp']} | "
            f"{r['fp']} ({r['fp_gestures']}) | {r['f1']:.3f} | {r['unseen']} |"
        )
    return "\n".join(lines)
