"""The spotting matrix: SynthME long videos in realistic mode, {parametric, photographic}
identities x {FFV1, H.264 CRF 18/23/28, H.265 CRF 23, camera CBR} x {200, 60, 30 fps},
spotted by `spotting.evaluate` and reported with a bootstrap interval on every F1.

How the sets are made (`build`):
- per identity kind and frame rate, the long videos are rendered once, losslessly (FFV1,
  the `master/` folder), from the `camera` or `photo` preset (photographic skin detail,
  camera noise);
- every encoding of that kind and rate re-encodes the same rendered frames
  (`synth.transcode`), so codecs are compared on identical content;
- headline cells (photographic H.264 CRF 23 at 200 and 30 fps, parametric FFV1 at 200
  fps) hold `HEADLINE_VIDEOS` videos of 20 s (8 micro-expressions each, 16 subjects); the
  other cells the first `CELL_VIDEOS` of them; every cell is also scored on those first
  videos, so a codec's F1 is compared with FFV1's on the same videos.

Seeds: `HELD_OUT_SEED` (1) makes the matrix; no parameter was tuned on it, and its
photographic identities are the mirrored variants, never seen in tuning. `TUNING_SEED`
(0) makes the headline cells again, on which the spotter's parameters were chosen.

Bootstrap: videos are resampled with replacement (`BOOTSTRAP` times, fixed seed) and the
pooled F1 recomputed; the interval is the 2.5th to 97.5th percentile.

Imports nothing of mfvan.stream or mfvan.deploy.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from mfvan.model import spotting
from mfvan.model.data import synth

TUNING_SEED = 0
HELD_OUT_SEED = 1
IDENTITIES = {"parametric": "camera", "photo": "photo"}  # kind -> SynthME preset
ENCODINGS = ("ffv1", "h264-crf18", "h264-crf23", "h264-crf28", "h265-crf23", "h264-cbr")
RATES = (200.0, 60.0, 30.0)
HEADLINE = (
    ("photo", "h264-crf23", 200.0),
    ("photo", "h264-crf23", 30.0),
    ("parametric", "ffv1", 200.0),
)
HEADLINE_VIDEOS = 19  # 152 micro-expressions
CELL_VIDEOS = 6  # 48 micro-expressions
TUNING_VIDEOS = 19  # 152 micro-expressions
BOOTSTRAP = 1000


def cell_name(kind: str, codec: str, fps: float) -> str:
    return f"{kind}-{fps:g}fps/{codec}"


def _videos(kind: str, codec: str, fps: float, seed: int) -> int:
    if seed != HELD_OUT_SEED:
        return TUNING_VIDEOS
    return HEADLINE_VIDEOS if (kind, codec, fps) in HEADLINE else CELL_VIDEOS


def cells(seed: int, quick: bool = False) -> list[tuple[str, str, float]]:
    """The (identity kind, encoding, fps) cells made for `seed`: the whole matrix for the
    held-out seed, the headline cells for the tuning seed. `quick`: the headline only."""
    if seed != HELD_OUT_SEED or quick:
        return list(HEADLINE)
    return [(k, c, f) for k in IDENTITIES for f in RATES for c in ENCODINGS]


def build(out: Path, seed: int, quick: bool = False, workers: int | None = None) -> None:
    """Render the masters and encode every cell of `seed` under `out/seed<seed>/` (kept:
    a cell whose ground truth exists is not made again)."""
    root = Path(out) / f"seed{seed}"
    todo = cells(seed, quick)
    groups = sorted({(k, f) for k, _, f in todo})
    for kind, fps in groups:
        n = max(_videos(k, c, f, seed) for k, c, f in todo if (k, f) == (kind, fps))
        master = root / f"{kind}-{fps:g}fps" / "master"
        cfg = replace(synth.CONFIGS[IDENTITIES[kind]], fps=fps, codec="ffv1", long_videos=n)
        _check_generator(master, cfg)
        if not _complete(master, n):
            synth.write_long_videos(cfg, master, seed=seed, workers=workers, progress=False)
            (master / GENERATOR_JSON).write_text(_generator(cfg) + "\n")
        jobs = []
        for k, codec, f in todo:
            if (k, f) != (kind, fps):
                continue
            folder = root / cell_name(kind, codec, fps)
            count = _videos(kind, codec, fps, seed)
            if not (folder / "ground_truth.csv").exists():
                jobs.append((str(master), str(folder), codec, count))
        if jobs:  # no worker processes are started for a group that is complete
            with synth._pool(workers) as pool:
                list(pool.map(_make_cell, *zip(*jobs, strict=True)))


GENERATOR_JSON = "generator.json"  # a master's config, all but its count of videos


class StaleMatrix(ValueError):
    """The matrix folder holds sets another generator config made."""


def _generator(cfg: synth.SynthConfig) -> str:
    return json.dumps(asdict(replace(cfg, long_videos=0)), sort_keys=True)


def _check_generator(master: Path, cfg: synth.SynthConfig) -> None:
    """Refuse a master made by another generator config (an older SynthME, or another
    preset): its cells would be scored as if they were this one's."""
    if not (master / "ground_truth.csv").exists():
        return
    made = master / GENERATOR_JSON
    if not made.exists() or made.read_text().strip() != _generator(cfg):
        raise StaleMatrix(
            f"{master} was generated with another SynthME config than this version's "
            f"{cfg.name!r} preset (or before {GENERATOR_JSON} was kept); delete "
            f"{master.parents[2]} to generate the matrix again"
        )


def _complete(master: Path, n: int) -> bool:
    if not (master / "ground_truth.csv").exists():
        return False
    return len(list(master.glob("*.mkv"))) >= n


def _make_cell(master: str, folder: str, codec: str, count: int) -> None:
    """One cell: the first `count` master videos, linked (FFV1) or re-encoded, and their
    rows of the ground truth. The CSVs are written last: they mark the cell complete."""
    master, folder = Path(master), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    videos = sorted(master.glob("*.mkv"))[:count]
    ext = synth.ENCODINGS[codec].ext
    names = {}
    for src in videos:
        dst = folder / f"{src.stem}.{ext}"
        names[src.name] = dst.name
        if codec == "ffv1":
            if not dst.exists():
                os.symlink(os.path.relpath(src, folder), dst)
        else:
            synth.transcode(src, dst, codec)
    identities = master / synth.IDENTITIES_CSV  # the cells are the master's faces
    if identities.exists():
        (folder / synth.IDENTITIES_CSV).write_bytes(identities.read_bytes())
    for table in ("nuisances.csv", "ground_truth.csv"):
        with open(master / table, newline="") as f:
            reader = csv.DictReader(f)
            rows = [dict(r, video=names[r["video"]]) for r in reader if r["video"] in names]
            columns = reader.fieldnames
        synth._write_csv(folder / table, columns, rows)


def _fingerprint(params) -> str:
    """What the cached results depend on: the spotter's code and its parameters. The code
    is each module's syntax tree without its docstrings, so that documenting a measurement
    (or reformatting) does not throw an hour of results away."""
    import mfvan.kernels as k

    h = hashlib.sha256(repr(params).encode())
    for name in ("faces.py", "facespot.py", "flow.py", "signals.py", "spotter.py"):
        h.update(_code_of((Path(k.__file__).parent / name).read_text()).encode())
    return h.hexdigest()[:12]


def _code_of(source: str) -> str:
    """The syntax tree of a module's source, docstrings and comments left out."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def evaluate_cell(folder: Path, params=None, workers: int | None = None) -> dict:
    """`spotting.evaluate` on one cell, cached in `folder/report-<fingerprint>/`."""
    report = Path(folder) / f"report-{_fingerprint(params)}"
    cached = report / "spotting.json"
    if cached.exists():
        return json.loads(cached.read_text())
    spotting.evaluate(folder, report, params, workers=workers, traces=False)
    return json.loads(cached.read_text())


def bootstrap_f1(per_video: list[dict], reps: int = BOOTSTRAP, seed: int = 0) -> tuple:
    """(low, high): the 95% bootstrap interval of the pooled F1, videos resampled."""
    if not per_video:
        return float("nan"), float("nan")
    counts = np.array([[v["tp"], v["fp"], v["micro"]] for v in per_video], float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(counts), (reps, len(counts)))
    tp, fp, n = (counts[picks][..., i].sum(axis=1) for i in range(3))
    f1 = np.where(n + tp + fp > 0, 2 * tp / np.maximum(n + tp + fp, 1), 0.0)
    return float(np.percentile(f1, 2.5)), float(np.percentile(f1, 97.5))


def summarise(result: dict, first: int | None = None) -> dict:
    """A cell's score (from `spotting.json`), over all its videos or the `first` few."""
    per_video = result["per_video"]
    if first is not None:
        per_video = per_video[:first]
    s = spotting.pool_scores(per_video)
    s["f1_ci"] = bootstrap_f1(per_video)
    return s


def parse_change(text: str) -> tuple[str, object]:
    """`NAME=VALUE` of a `SpotterParams` field (`mfvan spot-eval --sweep --compare`), the
    value of the field's own type (true/false for a flag); ValueError naming what is
    wrong."""
    from dataclasses import fields

    from mfvan.kernels.spotter import SpotterParams

    name, sep, value = text.partition("=")
    known = {f.name: f.default for f in fields(SpotterParams) if not callable(f.default)}
    if not sep or name not in known:
        raise ValueError(
            f"--compare takes NAME=VALUE of a spotter parameter ({', '.join(sorted(known))}), "
            f"got {text!r}"
        )
    default = known[name]
    if isinstance(default, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"--compare {name} takes true or false, got {value!r}")
        return name, value.lower() == "true"
    try:
        return name, type(default)(value)
    except ValueError:
        raise ValueError(
            f"--compare {name} takes a {type(default).__name__}, got {value!r}"
        ) from None


def sweep(
    out: Path,
    params=None,
    quick: bool = False,
    workers: int | None = None,
    compare: dict | None = None,
) -> dict:
    """Build (or reuse) every set and evaluate each cell. Returns {seed: {cell: summary}},
    each summary with `matched` (its first CELL_VIDEOS videos) for the FFV1 comparison.
    `compare` ({spotter parameter: value}): the headline cells are evaluated with those
    changes too, as each summary's `compared` (beside the cell as shipped)."""
    from mfvan.kernels.spotter import SpotterParams

    other = replace(params or SpotterParams(), **compare) if compare else None
    results: dict = {}
    for seed in (HELD_OUT_SEED, TUNING_SEED):
        build(out, seed, quick, workers)
        results[seed] = {}
        for kind, codec, fps in cells(seed, quick):
            name = cell_name(kind, codec, fps)
            raw = evaluate_cell(Path(out) / f"seed{seed}" / name, params, workers)
            summary = summarise(raw)
            summary["matched"] = summarise(raw, CELL_VIDEOS)
            if other is not None and (kind, codec, fps) in HEADLINE:
                changed = evaluate_cell(Path(out) / f"seed{seed}" / name, other, workers)
                summary["compared"] = summarise(changed)
            results[seed][name] = summary
            print(f"seed {seed} {name:<32} {spotting.one_line(summary)}", flush=True)
    (Path(out) / "matrix.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def legacy(out: Path, workers: int | None = None, params=None) -> dict:
    """SynthME's `standard` long videos (parametric faces without skin detail, white
    noise, FFV1), seeds 0 and 1: the sets of the earlier reports, for continuity."""
    results = {}
    for seed in (TUNING_SEED, HELD_OUT_SEED):
        folder = Path(out) / f"standard-seed{seed}"
        if not (folder / "ground_truth.csv").exists():
            synth.write_long_videos(
                synth.CONFIGS["standard"], folder, seed=seed, workers=workers, progress=False
            )
        results[seed] = summarise(evaluate_cell(folder, params, workers))
        print(f"standard seed {seed}: {spotting.one_line(results[seed])}", flush=True)
    return results


GOALS = """\
- Photographic identities, H.264 CRF 23, 200 fps and 30 fps: F1 >= 0.80, <= 1 false spot
  per minute.
- Every encoding: F1 no more than 0.05 below FFV1 on the same videos.
- Parametric identities, FFV1, 200 fps: F1 >= 0.85.
- Apex-to-emission p50 <= 100 ms at 200 fps."""


def _row(name: str, r: dict, ffv1: dict | None = None) -> str:
    c = r["fp_causes_per_minute"]
    lo, hi = r["f1_ci"]
    matched = r.get("matched", r)
    delta = "" if ffv1 is None else f"{matched['f1'] - ffv1['matched']['f1']:+.3f}"
    causes = " / ".join(f"{c[k]:.2f}" for k in spotting.CAUSES)
    return (
        f"| {name} | {r['videos']} | {r['micro']} | {r['precision']:.3f} | {r['recall']:.3f} "
        f"| **{r['f1']:.3f}** [{lo:.2f}, {hi:.2f}] | {matched['f1']:.3f} | {delta} "
        f"| {r['fp_per_minute']:.2f} | {causes} | {r['apex_error_ms']:.1f} "
        f"| {r['latency_ms']:.0f} |"
    )


# where the page's hand-written part begins (the spotter's design notes): kept as it is
NOTES_MARK = "<!-- design notes: written by hand; `mfvan spot-eval --sweep --docs` keeps them -->"


def _method(command: str, machine: str) -> list[str]:
    """docs/spotting.md's opening: what made it, and how each number is measured."""
    return [
        "# Spotting results",
        "",
        f"Produced by `{command}` on {machine} (2 cores). Each cell's videos are spotted by "
        "`mfvan spot-eval`'s own path: PyAV decodes, `mfvan.kernels.facespot.FaceSpotter` "
        "(the live spot stage's building block) tracks, crops and spots, in media time.",
        "",
        "## How it is measured",
        "",
        "- **Sets** (`mfvan.model.spotting_matrix`): SynthME long videos of 20 s in realistic "
        "mode: 4 micro-expressions and 1 macro-expression per 10 s among blinks, head "
        "drift, head turns and hands over the mouth (one of each per 20 s), flicker, light "
        "change; photographic skin detail (pores, fine hair, fabric); "
        "camera noise (spatially correlated, signal-dependent). *parametric*: SynthME's "
        "drawn faces (`camera` preset). *photo*: faces warped from a real photograph "
        "(`photo` preset; matplotlib's public-domain portrait of Grace Hopper) with the same "
        "landmark-anchored action-unit fields. See docs/synthme.md for a frame of each.",
        "- **Encodings**: the same rendered frames (an FFV1 master per identity kind and "
        "rate) re-encoded with PyAV: FFV1 (lossless reference); H.264 (libx264, veryfast) "
        "at CRF 18, 23, 28; H.265 (libx265) at CRF 23; H.264 at a constant bitrate of "
        "0.07 bit per pixel and frame (an IP camera's 2 Mbit/s at 720p30). Camera "
        "encodings have a key frame every second, no B-frames, no scene-cut key frames.",
        f"- **Seeds**: the matrix is seed {HELD_OUT_SEED}, held out: no parameter was "
        f"tuned on it, and its photographic identities are the mirrored variants, never "
        f"seen in tuning. The spotter was tuned on seed {TUNING_SEED} "
        f"({TUNING_VIDEOS} videos per headline cell), shown beside it.",
        f"- **Counts**: headline cells {HEADLINE_VIDEOS} videos (16 subjects, "
        f"{HEADLINE_VIDEOS * 8} micro-expressions); other cells their first "
        f"{CELL_VIDEOS} in name order ({CELL_VIDEOS * 8} micro-expressions; subjects 1-3, "
        f"two videos each). The F1 on those first {CELL_VIDEOS} videos is given for every "
        "cell, and its difference from FFV1 on the same videos.",
        "- **Score** (MEGC): a spotted interval is right when its IoU with a ground-truth "
        "micro-expression is at least 0.5, each ground truth matched once; precision, "
        "recall, F1 pooled over videos. 95% interval: bootstrap over videos "
        f"({BOOTSTRAP} resamples).",
        "- **False spots by cause**: overlaps a blink, a macro-expression, a head turn or "
        "a hand over the mouth (the realistic mode's gestures, docs/synthme.md); the tracker "
        "changed the crop between the spot's reference frame and its end; a GOP boundary "
        "(a key frame among predicted pictures: never in FFV1, whose pictures are all "
        "intra-coded) fell within 0.1 s before its onset (or its reference frame's); the "
        "crop's brightness "
        "changed by over 1% from onset to apex (light); other (codec and sensor noise, "
        "texture shimmer).",
        "- **Apex to emission**: media time from the apex frame to the frame that confirmed "
        "it (the spotter's own delay; the pipeline adds milliseconds, docs/benchmarks.md).",
        "",
    ]


def _compared(results: dict, compare: dict) -> list[str]:
    """The headline cells with `compare`'s changes and with the spotter as shipped (each
    column: with the change -> as shipped)."""
    change = ", ".join(f"`{k}={v}`" for k, v in compare.items())
    lines = [
        f"## The headline cells with {change}, then as shipped",
        "",
        f"Each column: with {change} → as shipped.",
        "",
        f"| cell | F1 with {change} | F1 as shipped | true spots | false / min "
        "| key-frame false / min | other false / min |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, label in ((HELD_OUT_SEED, "held out"), (TUNING_SEED, "tuning")):
        for kind, codec, fps in HEADLINE:
            r = results.get(seed, {}).get(cell_name(kind, codec, fps))
            if r is None or "compared" not in r:
                continue
            b = r["compared"]
            bc, ac = b["fp_causes_per_minute"], r["fp_causes_per_minute"]
            lines.append(
                f"| {cell_name(kind, codec, fps)} ({label}) | {b['f1']:.3f} | **{r['f1']:.3f}** "
                f"| {b['tp']} → {r['tp']} | {b['fp_per_minute']:.2f} → {r['fp_per_minute']:.2f} "
                f"| {bc['keyframe']:.2f} → {ac['keyframe']:.2f} "
                f"| {bc['other']:.2f} → {ac['other']:.2f} |"
            )
    return [*lines, ""]


def write_docs(
    results: dict,
    legacy_results: dict | None,
    docs: Path,
    command: str,
    machine: str,
    compare: dict | None = None,
) -> Path:
    """docs/spotting.md: the headline rows (held-out beside tuning), the whole matrix, the
    earlier sets, and how each number was made; the page's design notes (from
    `NOTES_MARK` on) are kept."""
    header = [
        "| cell | videos | micro | precision | recall | F1 [95% CI] | F1, first "
        f"{CELL_VIDEOS} videos | vs FFV1 there | false / min | by cause: "
        + " / ".join(spotting.CAUSES)
        + " | apex error ms | apex to emission p50 ms |",
        "|---" * 12 + "|",
    ]
    held, tuning = results.get(HELD_OUT_SEED, {}), results.get(TUNING_SEED, {})
    lines = [
        *_method(command, machine),
        "## Headline (held-out seed, then the tuning seed)",
        "",
        *header,
    ]
    for kind, codec, fps in HEADLINE:
        name = cell_name(kind, codec, fps)
        if name in held:
            lines.append(_row(f"{name} (held out)", held[name]))
        if name in tuning:
            lines.append(_row(f"{name} (tuning)", tuning[name]))
    lines += ["", "Goals, on the held-out seed:", "", GOALS, ""]
    if compare:
        lines += _compared(results, compare)
    lines += ["## The matrix (held-out seed)", ""]
    for kind in IDENTITIES:
        for fps in RATES:
            rows = [(c, held.get(cell_name(kind, c, fps))) for c in ENCODINGS]
            rows = [(c, r) for c, r in rows if r is not None]
            if not rows:
                continue
            lines += [f"### {kind}, {fps:g} fps", "", *header]
            ffv1 = dict(rows).get("ffv1")
            for codec, r in rows:
                label = synth.ENCODINGS[codec].label
                lines.append(_row(label, r, None if codec == "ffv1" else ffv1))
            lines.append("")
    if legacy_results:
        lines += [
            "## The earlier sets",
            "",
            "SynthME `standard` long videos (parametric faces without skin detail, white "
            "noise, FFV1, 200 fps, 4 videos, 3 micro-expressions per 10 s): the sets of the "
            "earlier reports (F1 0.818 on seed 0 and 0.711 on seed 1 with the spotter "
            "before the realistic mode).",
            "",
            *header,
            *[_row(f"standard, seed {s}", r) for s, r in legacy_results.items()],
            "",
        ]
    docs = Path(docs)
    docs.parent.mkdir(parents=True, exist_ok=True)
    kept = docs.read_text() if docs.exists() else ""
    notes = NOTES_MARK + kept.split(NOTES_MARK, 1)[1] if NOTES_MARK in kept else ""
    docs.write_text("\n".join(lines) + "\n" + (f"\n{notes}" if notes else ""))
    return docs
