"""Recognition on faces it has never seen: the held-out-identity protocol.

Two families of SynthME long videos, made from morphs of the shipped portraits
(`mfvan.model.data.portraits`), each rendered once losslessly and re-encoded as cameras
send it (`spotting_matrix`'s masters and cells):

- **tuning** (`morph` preset, training portraits, seed `TUNING_SEED`): what the
  recognizer's spotted-pair training, its "none" veto class and its calibration read;
- **held out** (`morph-heldout` preset, held-out portraits only, seed `HELD_OUT_SEED`):
  never trained, tuned, calibrated or chosen on; every figure of docs/results.md's
  held-out table is measured here.

Each family has cells {FFV1, H.264 CRF 23 camera-like, camera CBR (held out only)} x {200,
30 fps}. A held-out cell's score is spot-then-recognize (`spotting.evaluate` with a recognizer): the
online spotter over each video, each spotted interval classified as the live recognizer
classifies it; UF1 on the spotted true positives, STRS, ECE, with 95% bootstrap intervals
over identities (`strs.bootstrap`, videos resampled; one identity per video).

Imports nothing of mfvan.stream or mfvan.deploy.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from mfvan.model.calibration import calibration_report
from mfvan.model.data import synth
from mfvan.model.data.pairs import Pairs
from mfvan.model.mfvan import CONFIGS
from mfvan.model.spotting import NONE, OTHERS, chain, load_truth, spot_runs, spotted_pairs
from mfvan.model.spotting import recognize as spotting_recognize
from mfvan.model.spotting_matrix import _complete, _make_cell
from mfvan.model.train import build_model, predict, train, train_preset

TUNING_SEED = 0
HELD_OUT_SEED = 1
PRESETS = {TUNING_SEED: "morph", HELD_OUT_SEED: "morph-heldout"}
CODECS = ("ffv1", "h264-crf23", "h264-cbr")
# the tuning family leaves camera CBR out: it trains on the same spots' key-frame pulses in
# H.264 CRF 23 and costs a third less to spot (two cores); the held-out family has all three
TUNING_CODECS = ("ffv1", "h264-crf23")
RATES = (200.0, 30.0)
VIDEOS = {HELD_OUT_SEED: 19, TUNING_SEED: 24}  # 8 micro-expressions a video: 152 and 192


def family(seed: int) -> str:
    return "heldout" if seed == HELD_OUT_SEED else "tuning"


def codecs(seed: int) -> tuple[str, ...]:
    return CODECS if seed == HELD_OUT_SEED else TUNING_CODECS


def cell_dir(root: Path, seed: int, codec: str, fps: float) -> Path:
    return Path(root) / family(seed) / f"{fps:g}fps" / codec


def build(root: Path, seed: int, workers: int | None = None, videos: int | None = None) -> None:
    """Render the masters of `seed`'s family and encode its cells under `root` (kept: a
    cell whose ground truth exists is not made again)."""
    n = videos or VIDEOS[seed]
    for fps in RATES:
        master = Path(root) / family(seed) / f"{fps:g}fps" / "master"
        cfg = replace(synth.CONFIGS[PRESETS[seed]], fps=fps, codec="ffv1", long_videos=n)
        if not _complete(master, n):
            synth.write_long_videos(cfg, master, seed=seed, workers=workers, progress=False)
        jobs = [
            (str(master), str(cell_dir(root, seed, codec, fps)), codec, n)
            for codec in codecs(seed)
            if not (cell_dir(root, seed, codec, fps) / "ground_truth.csv").exists()
        ]
        if jobs:
            with synth._pool(workers) as pool:
                list(pool.map(_make_cell, *zip(*jobs, strict=True)))


# ----------------------------------------------------------------------------- training

CLASSES = ("negative", "positive", "surprise")
# the veto recognizer's classes: the three, "others" (a micro-expression outside them,
# published so that its spot counts), and "none" (not a micro-expression: refused)
VETO_CLASSES = (*CLASSES, OTHERS, NONE)
FOLDS = 4  # cross-fitting over the tuning identities, for the calibration


def tuning_pairs(
    root: Path, classes=VETO_CLASSES, size: int = 64, cache: Path | None = None, workers=None
) -> Pairs:
    """The spotter's own pairs in every tuning cell (training identities, through every
    codec and rate), labelled by the micro-expression each matched, and `NONE` for each
    spot that matched none (`spotting.spotted_pairs`). Subjects are the identities
    (`subNN`: the same morph in every cell of the family)."""
    parts = []
    for fps in RATES:
        for codec in TUNING_CODECS:
            part = spotted_pairs(
                cell_dir(root, TUNING_SEED, codec, fps),
                tuple(classes),
                size,
                cache,
                workers=workers,
            )
            part.subjects = np.asarray([s.rsplit("/", 1)[-1] for s in part.subjects])
            parts.append(part)
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + part
    return joined


# the recognizers compared on held-out identities, each trained on the same tuning pairs
# with the same classes and calibration: the shipped one first
RECOGNIZERS = ("region-motion", "off-apexnet", "mfvan")


def train_recognizer(pairs: Pairs, kind: str = "region-motion", seed: int = 0):
    """Model `kind` (`train.MODELS`) on the `motion` config (the spot stage's flow as an
    input; MFVAN also reads the crops) trained on `pairs` with its own recipe
    (`train.train_preset`)."""
    import torch

    torch.manual_seed(seed)
    cfg = replace(CONFIGS["motion"], num_classes=len(pairs.classes))
    model = build_model(kind, cfg)
    return train(model, pairs, replace(train_preset(kind, "motion"), seed=seed)).eval()


def cross_fitted_calibration(pairs: Pairs, seed: int = 0, kind: str = "region-motion") -> dict:
    """The temperature for model `kind`'s probabilities, fitted on predictions of training
    identities by models that never saw them: the identities are cut into `FOLDS` groups,
    each predicted by a model trained on the others; the report
    (`calibration.calibration_report`) also gives the ECE before and after."""
    subjects = np.unique(pairs.subjects)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(subjects), np.arange(len(subjects)) % FOLDS, strict=True))
    folds = np.asarray([fold_of[s] for s in pairs.subjects])
    probs = np.zeros((len(pairs), len(pairs.classes)), np.float64)
    for k in range(FOLDS):
        test = folds == k
        model = train_recognizer(pairs.subset(np.flatnonzero(~test)), kind, seed)
        probs[test] = predict(model, pairs.subset(np.flatnonzero(test)))
    report = calibration_report(probs, pairs.labels, folds)
    report["fitted_on"] = (
        f"{len(pairs)} spotted pairs of {len(subjects)} training identities (morphs of "
        f"training portraits, FFV1 and H.264 CRF 23 at 200 and 30 fps), each "
        f"predicted by a model trained on the other {FOLDS - 1} of {FOLDS} identity folds"
    )
    return report


# ----------------------------------------------------------------------------- evaluation


def evaluate_cell(
    folder: Path,
    classify,
    classes,
    cache: Path | None = None,
    min_confidence: float = 0.0,
    workers=None,
) -> dict:
    """Spot-then-recognize on one held-out cell: `before` publishes every spot as its most
    probable emotion, `after` applies the veto (`NONE`) and `min_confidence` as the live
    recognizer does. Each with UF1 on the spotted true positives, STRS, ECE and 95%
    bootstrap intervals over identities (one per video), and false events per minute."""
    folder = Path(folder)
    truth = load_truth(folder)
    runs = spot_runs(folder, None, workers, pairs=True, cache_dir=cache)
    spotting_recognize(runs, classify, list(classes))
    before = chain(runs, truth, list(classes), veto=False)["pooled"]
    after = chain(runs, truth, list(classes), veto=True, min_confidence=min_confidence)
    return {"before": before, "after": after["pooled"], "videos": len(runs)}


def evaluate(root: Path, classify, classes, cache=None, min_confidence=0.0, workers=None):
    """`evaluate_cell` on every held-out cell: {"200fps/h264-crf23": {...}, ...}."""
    return {
        f"{fps:g}fps/{codec}": evaluate_cell(
            cell_dir(root, HELD_OUT_SEED, codec, fps),
            classify,
            classes,
            cache,
            min_confidence,
            workers,
        )
        for fps in RATES
        for codec in CODECS
    }


def train_shipped(
    root: Path, out: Path, cache: Path | None = None, workers=None, kind: str = "region-motion"
) -> Path:
    """Recognizer `kind` with the veto class (`RECOGNIZERS`; the shipped one is
    region-motion): calibrated (cross-fitted on the tuning identities), then trained on
    every tuning pair, saved at `out`."""
    from mfvan.model.weights import save_weights

    pairs = tuning_pairs(root, VETO_CLASSES, cache=cache, workers=workers)
    counts = {c: int((pairs.labels == k).sum()) for k, c in enumerate(pairs.classes)}
    calibration = cross_fitted_calibration(pairs, kind=kind)
    model = train_recognizer(pairs, kind)
    save_weights(
        model,
        out,
        list(pairs.classes),
        training_data=(
            f"the spotter's own pairs in SynthME long videos of {len(np.unique(pairs.subjects))} "
            f"morph identities of training portraits (seed {TUNING_SEED}; FFV1, H.264 CRF 23, "
            f"200 and 30 fps): {counts} ('none': spots that matched no "
            "micro-expression); no held-out portrait"
        ),
        calibration=calibration,
    )
    return Path(out)


# ----------------------------------------------------------------------------- report


def _row(name: str, s: dict) -> str:
    ci = s["ci"]
    return (
        f"| {name} | {s['tp']} / {s['fp']} / {s['fn']} | {s['f1']:.3f} | "
        f"{s['uf1']:.3f} [{ci['uf1'][0]:.3f}, {ci['uf1'][1]:.3f}] ({s['recognized']}) | "
        f"{s['uar']:.3f} | {s['strs']:.3f} [{ci['strs'][0]:.3f}, {ci['strs'][1]:.3f}] | "
        f"{s['ece']:.3f} / {s.get('ece_spotted', float('nan')):.3f} | "
        f"{s['false_per_minute']:.2f} | {s['vetoed']} |"
    )


HEADER = (
    "| cell | TP / FP / FN | spotting F1 | UF1 on spotted TPs [95% CI] (n) | UAR | STRS [95% CI] "
    "| ECE: spotted TPs / every spot | false events / min | vetoed |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def format_results(version: str, cells: dict) -> str:
    lines = [f"{version}: held-out identities", HEADER]
    for cell, r in cells.items():
        lines.append(_row(f"{cell}, before the veto", r["before"]))
        lines.append(_row(f"{cell}, after", r["after"]))
    return "\n".join(lines)


MARK_BEGIN, MARK_END = "<!-- heldout: begin -->", "<!-- heldout: end -->"


def write_docs(results: dict, path: Path, took: str, machine: str = "") -> Path:
    """The held-out section of `path` (between its markers; appended when absent)."""
    lines = [
        MARK_BEGIN,
        "## Faces it has never seen (held-out identities)",
        "",
        f"Written by `mfvan heldout --docs {path}` ({took}{machine and ' on ' + machine}; "
        "the sets are kept under `--out` and reused). Long "
        "videos of 16 identities made from the **held-out** portraits only "
        '(docs/datasets.md, "Portraits"; morphs of two or three, never a real person), '
        f"seed {HELD_OUT_SEED}, {VIDEOS[HELD_OUT_SEED]} videos of 20 s a cell (8 "
        "micro-expressions each, with blinks, macro-expressions, head drift, light change "
        "and camera noise), rendered once and encoded as cameras send it. No model, "
        "threshold, temperature or choice was fitted on them. Each spotted interval is "
        "classified as the live recognizer classifies it (the spot stage's crops and flow, "
        "ONNX Runtime, calibrated). *Before the veto*: every spot published as its most "
        "probable emotion; *after*: a spot whose most probable class is `none` is refused, "
        "as `mfvan run` refuses it. Intervals: 95% bootstrap over identities (one per "
        "video).",
        "",
    ]
    lines += [
        "Every model side by side, as published (after the veto for those with one): "
        "STRS / UF1 on spotted true positives / false events a minute / ECE on the spotted "
        "true positives / ECE on every spot (a spot on no micro-expression is right only "
        "as `none`: the pairs the calibration is fitted on, as spotted). Those with a "
        "veto were trained, calibrated and chosen on the tuning identities' spotted pairs "
        "alone (`mfvan heldout --compare`), the same pairs, classes and recipe of "
        "calibration for each:",
        "",
        *summary_table(results),
        "",
    ]
    diagram = write_reliability(results, Path(path).parent / "images" / "heldout-reliability.png")
    lines += [
        "Reliability on the held-out spotted true positives (the calibration's check: "
        "points on the diagonal mean a confidence of p is right p of the time):",
        "",
        f"![reliability diagrams](images/{diagram.name})",
        "",
    ]
    for weights, r in results.items():
        name = Path(weights).name
        lines += [f"### {r['version']}", "", f"`{name}`, classes {r['classes']}", "", HEADER]
        for cell, c in _cells(r).items():
            lines.append(_row(f"{cell}, before the veto", c["before"]))
            if NONE in r["classes"]:
                lines.append(_row(f"{cell}, after", c["after"]))
        lines.append("")
    sheet = Path(path).parent / "images" / "heldout-identities.png"
    write_identity_sheet(sheet)
    lines += [
        "The faces: a tuning identity and a held-out one per column (neutral, as SynthME "
        "renders them; every one a morph, none a real person):",
        "",
        f"![tuning and held-out identities](images/{sheet.name})",
        "",
        MARK_END,
    ]
    section = "\n".join(lines)
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return path


def _cells(result: dict) -> dict:
    return {cell: c for cell, c in result.items() if isinstance(c, dict) and "before" in c}


def summary_table(results: dict) -> list[str]:
    """Every model's STRS, UF1 on spotted true positives, false events a minute and ECE
    (on the spotted true positives, and on every spot) in each held-out cell, as
    published (after the veto where it has one)."""
    cells = list(_cells(next(iter(results.values()))))
    lines = [
        "| model | " + " | ".join(cells) + " |",
        "|---|" + "---|" * len(cells),
    ]
    for r in results.values():
        side = "after" if NONE in r["classes"] else "before"
        row = []
        for cell in cells:
            c = r[cell][side]
            row.append(
                f"{c['strs']:.3f} / {c['uf1']:.3f} / {c['false_per_minute']:.2f} / "
                f"{c['ece']:.3f} / {c.get('ece_spotted', float('nan')):.3f}"
            )
        lines.append(f"| {r['version']} | " + " | ".join(row) + " |")
    return lines


def write_reliability(results: dict, path: Path) -> Path:
    """Reliability diagrams of every model on the held-out spotted true positives, one
    panel per cell: accuracy against mean confidence in each confidence bin (marker area:
    the bin's count), the diagonal being a recognizer whose confidence means what it says."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(_cells(next(iter(results.values()))))
    cols = 3
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax, cell in zip(axes.flat, cells, strict=False):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        eces = []
        for r in results.values():
            c = r[cell]["after" if NONE in r["classes"] else "before"]
            bins = c.get("reliability", [])
            if not bins:
                continue
            conf = [b["confidence"] for b in bins]
            acc = [b["accuracy"] for b in bins]
            name = r["version"].split("@")[0]
            (line,) = ax.plot(conf, acc, marker="o", ms=3, lw=1, label=name)
            ax.scatter(
                conf, acc, s=[4 + 2 * b["count"] for b in bins], alpha=0.25, color=line.get_color()
            )
            eces.append(f"{c['ece']:.3f}")
        ax.set(title=cell, xlim=(0, 1.02), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy")
        ax.text(
            0.98, 0.03, "ECE " + " / ".join(eces), ha="right", fontsize=7, transform=ax.transAxes
        )
    for ax in list(axes.flat)[len(cells) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(
        "Held-out identities, spotted true positives: reliability (marker area: pairs in the bin)"
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


FIXTURE_KINDS = ("blink", "keyframe", "micro")


def write_veto_fixture(
    root: Path, path: Path, cache: Path | None = None, per_kind: int = 3
) -> Path:
    """Pairs of the held-out H.264 CRF 23 cells at 200 and 30 fps, exactly as the spot
    stage sends them (onset crop, apex crop, flow): in each cell the first `per_kind` (in
    video and time order, whatever any model makes of them) of each of `FIXTURE_KINDS`:
    blinks and key-frame pulses the spotter took for micro-expressions
    (`spotting.false_spot_cause`), and micro-expressions it spotted right. The veto's
    acceptance test reads them (tests/data/veto-pairs.npz)."""
    from mfvan.model.spotting import false_spot_cause, spot_labels

    rows = []
    for fps in RATES:
        folder = cell_dir(root, HELD_OUT_SEED, "h264-crf23", fps)
        truth = load_truth(folder)
        found: dict[str, list] = {k: [] for k in FIXTURE_KINDS}
        for run in spot_runs(folder, None, None, pairs=True, cache_dir=cache):
            others = [t for t in truth.get(run.video, []) if t.kind != "micro"]
            for it, label in zip(run.intervals, spot_labels(run, truth), strict=True):
                if label in (NONE, None):  # matched no micro-expression: what caused it
                    kind = false_spot_cause(run, (it["onset"], it["apex"], it["offset"]), others)
                else:
                    kind = f"micro:{label}" if label in CLASSES else None
                group = found.get((kind or "").split(":")[0])
                if group is not None and len(group) < per_kind:
                    group.append((kind, f"{fps:g}fps/{run.video}@{it['onset']}", *it["pair"]))
        short = [k for k, group in found.items() if len(group) < per_kind]
        if short:
            raise ValueError(f"{folder}: fewer than {per_kind} spotted {', '.join(short)}")
        rows += [row for group in found.values() for row in group]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        kinds=np.asarray([r[0] for r in rows]),
        names=np.asarray([r[1] for r in rows]),
        onset=np.stack([r[2] for r in rows]),
        apex=np.stack([r[3] for r in rows]),
        flow=np.stack([r[4] for r in rows]),
    )
    return path


def write_identity_sheet(path: Path, count: int = 6) -> Path:
    """The first `count` identities of each family, neutral, as a grey PNG: tuning above,
    held out below."""
    import cv2

    rows = []
    for seed in (TUNING_SEED, HELD_OUT_SEED):
        cfg = synth.CONFIGS[PRESETS[seed]]
        tiles = []
        for subject in range(1, count + 1):
            frame = synth.SubjectRenderer(subject, seed, cfg).render(
                synth.FrameState({}), noise=False
            )
            tiles.append(cv2.resize(frame, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
        rows.append(np.hstack(tiles))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    return path
