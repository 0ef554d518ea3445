"""Spotting evaluation: runs the online spotter over long videos exactly as the live
pipeline does (PyAV decodes; `mfvan.kernels.facespot.FaceSpotter`, the live spot stage's
own building block, tracks, crops and spots one frame at a time, in media time) and
scores it by the MEGC protocol.

Protocol (docs/datasets.md, "Spotting"; MEGC 2020, Li et al. 2020): a predicted
interval is a true positive when its IoU with a ground-truth micro-expression interval
(frame sets, onset and offset inclusive) is at least 0.5; each ground truth matches at most
once (greedily, highest IoU first); unmatched predictions are false positives. Precision,
recall and F1 are pooled over all videos. Also: the mean absolute apex error of true
positives in ms, the apex-to-emission latency, false spots per minute by cause
(`false_spot_cause`), and a trace per video (signal, threshold, ground truth, detections)
as a PNG. The folder layout it reads is `LAYOUT`; anything else is refused in one line.

The matrix of realistic sets (identities x encodings x frame rates) is
`mfvan.model.spotting_matrix`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from mfvan.kernels.decide import VETO, decide

LAYOUT = """\
DIR holds the long videos and their ground truth (a SynthME set's long/ folder, or the
set's root with long/ inside; `mfvan synth` writes it):
  DIR/ground_truth.csv  one row per expression: video, kind (micro | macro), onset, apex,
                        offset (0-based frame indices in the video, inclusive), and
                        optionally class (its label, for recognition; empty: none)
  DIR/nuisances.csv     optional: video, kind (blink, turn, hand), start, end
  DIR/<video>           every video named in ground_truth.csv (.mkv or .mp4, any codec
                        FFmpeg decodes)"""

TRUTH_COLUMNS = ("video", "kind", "onset", "apex", "offset")
NONE = VETO  # the recognizer's veto class: a spot that is not a micro-expression
# a micro-expression outside the scored classes (SynthME's and CASME II's "others"): a
# recognizer may name it, so that it is published (a spot that is right) rather than vetoed
OTHERS = "others"
NUISANCE_COLUMNS = ("video", "kind", "start", "end")


class LayoutError(ValueError):
    """A folder that is not in spot-eval's layout (`LAYOUT`); the message is one line."""


def check_layout(data: Path) -> Path:
    """The folder holding the videos and `ground_truth.csv`, or `LayoutError` naming the
    first thing missing."""
    data = Path(data)
    if not data.exists():
        raise LayoutError(f"{data} does not exist")
    if not data.is_dir():
        raise LayoutError(f"{data} is not a folder (spot-eval wants a folder of long videos)")
    if (data / "long").is_dir() and not (data / "ground_truth.csv").exists():
        data = data / "long"
    truth = data / "ground_truth.csv"
    if not truth.is_file():
        raise LayoutError(f"{data} has no ground_truth.csv (see `mfvan spot-eval --help`)")
    for name, columns in (("ground_truth.csv", TRUTH_COLUMNS), ("nuisances.csv", NUISANCE_COLUMNS)):
        if not (data / name).exists():
            continue
        with open(data / name, newline="") as f:
            header = next(csv.reader(f), [])
        missing = [c for c in columns if c not in header]
        if missing:
            raise LayoutError(f"{data / name} lacks the column(s) {', '.join(missing)}")
    with open(truth, newline="") as f:
        rows = list(csv.DictReader(f))
    for n, row in enumerate(rows, start=2):
        try:
            int(row["onset"]), int(row["apex"]), int(row["offset"])
        except (TypeError, ValueError):
            raise LayoutError(
                f"{truth} line {n}: onset, apex, offset must be frame numbers"
            ) from None
    named = sorted({r["video"] for r in rows})
    absent = [v for v in named if not (data / v).is_file()]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise LayoutError(f"{data} lacks the video {absent[0]}{more} named in ground_truth.csv")
    if not named and not any(p.suffix in (".mkv", ".mp4") for p in data.iterdir()):
        raise LayoutError(f"{data} has no long videos (.mkv, .mp4)")
    return data


@dataclass(frozen=True)
class Truth:
    video: str
    kind: str  # micro | macro | blink
    onset: int
    apex: int
    offset: int
    label: str | None = None  # the class (ground_truth.csv's optional `class` column)


def load_truth(long_dir: Path) -> dict[str, list[Truth]]:
    """SynthME's `ground_truth.csv` and `nuisances.csv`, by video file name."""
    long_dir = Path(long_dir)
    out: dict[str, list[Truth]] = {}
    with open(long_dir / "ground_truth.csv", newline="") as f:
        for r in csv.DictReader(f):
            t = Truth(
                r["video"],
                r["kind"],
                int(r["onset"]),
                int(r["apex"]),
                int(r["offset"]),
                r.get("class") or None,
            )
            out.setdefault(t.video, []).append(t)
    nuisances = long_dir / "nuisances.csv"
    if nuisances.exists():
        with open(nuisances, newline="") as f:
            for r in csv.DictReader(f):
                start, end = int(r["start"]), int(r["end"])
                t = Truth(r["video"], r["kind"], start, (start + end) // 2, end)
                out.setdefault(t.video, []).append(t)
    return out


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """IoU of two inclusive frame intervals."""
    inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
    if inter <= 0:
        return 0.0
    return inter / ((a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter)


def match(
    predicted: list[tuple[int, int]], truth: list[tuple[int, int]], threshold: float = 0.5
) -> list[tuple[int, int]]:
    """(prediction index, truth index) pairs: greedy by IoU, each side used once."""
    pairs = sorted(
        (
            (iou(p, t), i, j)
            for i, p in enumerate(predicted)
            for j, t in enumerate(truth)
            if iou(p, t) >= threshold
        ),
        reverse=True,
    )
    used_p, used_t, out = set(), set(), []
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            out.append((i, j))
    return out


@dataclass
class VideoRun:
    video: str
    fps: float
    frames: int
    intervals: list  # of dicts (Interval without crops)
    signal: np.ndarray
    threshold: np.ndarray
    rejected: dict
    seconds: float  # wall time of decode + track + spot
    key_frames: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    versions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # crop geometry
    brightness: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # crop mean


def spot_video(
    path: Path, params=None, size: int = 128, pairs: bool = False, max_faces: int = 1
) -> VideoRun:
    """The spotter over one video file, frame by frame, through the same `FaceSpotter` as
    the live spot stage, on the same clock (media time: PTS x time base) and the same grey
    (the decoder's luma plane, as ingest sends it). With `pairs`, each interval keeps
    `pair`: its onset and apex crops and their flow, exactly as the spot stage sends them
    (`kernels.motion.wire_flow`), for the recognizer."""
    import av

    from mfvan.kernels.facespot import FaceSpotter, decoded_grey
    from mfvan.kernels.media import decode
    from mfvan.kernels.motion import wire_flow

    spots = FaceSpotter(params, size, max_faces=max_faces)
    intervals, signal, threshold, keys, versions, brightness = [], [], [], [], [], []
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        for index, frame, media, key in decode(container, stream):
            for it in spots.push(decoded_grey(frame), index, media, key):
                d = asdict(it)
                del d["onset_crop"], d["apex_crop"]
                if pairs:
                    flow = wire_flow(it.onset_crop, it.apex_crop)
                    d["pair"] = (it.onset_crop.copy(), it.apex_crop.copy(), flow)
                intervals.append(d)
            signal.append(spots.last_signal)
            threshold.append(spots.threshold())
            keys.append(key)
            versions.append(spots.tracker.version)
            brightness.append(spots.crop.mean() if spots.crop is not None else np.nan)
    return VideoRun(
        Path(path).name,
        fps,
        len(signal),
        intervals,
        np.asarray(signal, np.float32),
        np.asarray(threshold, np.float32),
        dict(spots.rejected),
        time.perf_counter() - started,
        np.asarray(keys, bool),
        np.asarray(versions, np.int32),
        np.asarray(brightness, np.float32),
    )


CAUSES = ("blink", "macro", "turn", "hand", "tracker", "keyframe", "light", "other")


def false_spot_cause(run: VideoRun, p: tuple[int, int, int], others: list[Truth]) -> str:
    """Why a false spot (onset, apex, offset) fired, as far as the data tell: it overlaps a
    blink, a macro-expression, a head turn or a hand over the mouth; the crop geometry
    changed between its reference frame and its offset (tracker); a GOP boundary (a key
    frame among predicted pictures, `GopBoundaries`) fell near its onset or near its
    reference frame's (keyframe); the crop's mean brightness changed by more than 1% from
    onset to apex (light); else other (codec block noise, texture shimmer, sensor noise)."""
    onset, apex, offset = p
    hit = [t.kind for t in others if min(offset, t.offset) >= max(onset, t.onset)]
    for kind in ("blink", "macro", "turn", "hand"):
        if kind in hit:
            return kind
    lag = int(round(0.5 * run.fps))
    near = max(1, int(round(0.1 * run.fps)))
    first = max(onset - lag, 0)
    if len(run.versions) > offset and run.versions[first] != run.versions[offset]:
        return "tracker"
    keys = run.key_frames
    if len(keys) > apex:  # GOP boundaries only (`GopBoundaries`): never in FFV1
        for a, b in ((onset - near, apex), (onset - lag - near, apex - lag)):
            if keys[max(a, 0) : max(b + 1, 0)].any():
                return "keyframe"
    light = run.brightness
    if len(light) > apex and np.isfinite(light[[onset, apex]]).all():
        if abs(light[apex] - light[onset]) > 0.01 * max(light[onset], 1.0):
            return "light"
    return "other"


def score_video(run: VideoRun, truth: list[Truth]) -> dict:
    """One video's counts: true and false spots (false ones by cause), apex errors and
    apex-to-emission latencies (ms)."""
    micro = [t for t in truth if t.kind == "micro"]
    others = [t for t in truth if t.kind != "micro"]
    pred = [(i["onset"], i["offset"]) for i in run.intervals]
    pairs = match(pred, [(t.onset, t.offset) for t in micro])
    matched = {i for i, _ in pairs}
    causes = dict.fromkeys(CAUSES, 0)
    for i, it in enumerate(run.intervals):
        if i not in matched:
            causes[false_spot_cause(run, (it["onset"], it["apex"], it["offset"]), others)] += 1
    return {
        "video": run.video,
        "fps": run.fps,
        "frames": run.frames,
        "minutes": run.frames / run.fps / 60,
        "micro": len(micro),
        "tp": len(pairs),
        "fp": len(pred) - len(pairs),
        "fp_causes": causes,
        "apex_error_ms": [
            abs(run.intervals[i]["apex"] - micro[j].apex) * 1000 / run.fps for i, j in pairs
        ],
        "latency_ms": [i["latency_ns"] / 1e6 for i in run.intervals],
        "rejected": run.rejected,
        "seconds": run.seconds,
    }


def pool_scores(per_video: list[dict]) -> dict:
    """MEGC precision / recall / F1 pooled over videos; apex error (mean), apex-to-emission
    latency (p50, media time), false spots per minute by cause."""
    tp = sum(v["tp"] for v in per_video)
    fp = sum(v["fp"] for v in per_video)
    n_truth = sum(v["micro"] for v in per_video)
    minutes = sum(v["minutes"] for v in per_video)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_truth if n_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    apex = [e for v in per_video for e in v["apex_error_ms"]]
    latency = [e for v in per_video for e in v["latency_ms"]]
    seconds = sum(v["seconds"] for v in per_video)
    causes = {c: sum(v["fp_causes"][c] for v in per_video) for c in CAUSES}
    return {
        "videos": len(per_video),
        "micro": n_truth,
        "predicted": tp + fp,
        "tp": tp,
        "fp": fp,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "apex_error_ms": float(np.mean(apex)) if apex else float("nan"),
        "latency_ms": float(np.median(latency)) if latency else float("nan"),
        "fp_per_minute": fp / minutes if minutes else float("nan"),
        "fp_causes_per_minute": {c: n / minutes for c, n in causes.items()} if minutes else {},
        "fps_wall": sum(v["frames"] for v in per_video) / seconds if seconds else float("nan"),
        "rejected": {
            k: sum(v["rejected"].get(k, 0) for v in per_video)
            for k in (per_video[0]["rejected"] if per_video else {})
        },
    }


def score(runs: list[VideoRun], truth: dict[str, list[Truth]]) -> dict:
    """Pooled scores of several videos' runs (see `pool_scores`)."""
    return pool_scores([score_video(r, truth.get(r.video, [])) for r in runs])


def plot_trace(run: VideoRun, truth: list[Truth], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(run.frames) / run.fps
    fig, ax = plt.subplots(figsize=(14, 3.2))
    colours = {
        "micro": "tab:green",
        "macro": "tab:red",
        "blink": "tab:blue",
        "turn": "tab:purple",
        "hand": "tab:brown",
    }
    for g in truth:
        ax.axvspan(g.onset / run.fps, g.offset / run.fps, color=colours[g.kind], alpha=0.25)
    ax.plot(t, run.signal, lw=0.7, color="k", label="signal (px, 128 px crop)")
    ax.plot(t, run.threshold, lw=0.7, color="tab:orange", label="start threshold")
    for i in run.intervals:
        ax.plot([i["onset"] / run.fps, i["offset"] / run.fps], [-0.02, -0.02], lw=4, color="m")
        ax.axvline(i["apex"] / run.fps, color="m", lw=0.6, ls="--")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.25, label=f"truth: {k}")
        for k, c in colours.items()
    ]
    handles.append(plt.Line2D([], [], color="m", lw=4, label="spotted"))
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, loc="upper right", ncol=3)
    ax.set_xlabel("s")
    ax.set_title(f"{run.video}: {run.fps:g} fps")
    ax.set_xlim(0, t[-1] if len(t) else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _spot_one(path: str, params, pairs: bool = False, max_faces: int = 1) -> VideoRun:
    import cv2

    from mfvan.kernels.spotter import warm_up

    cv2.setNumThreads(1)
    warm_up()
    return spot_video(Path(path), params, pairs=pairs, max_faces=max_faces)


def recognize(runs: list[VideoRun], classify, classes: list[str]) -> None:
    """Each spotted interval's class, as the live recognizer gives it: `classify(onset,
    apex, flow)` (a backend of `mfvan.deploy.inference.backends`) on the pair the spot stage would
    have sent. Sets `label` (the most probable class, `NONE` included), `emotion` (the most
    probable class that is not `NONE`) and `probs` on each interval and drops its pixels."""
    emotions = [k for k, c in enumerate(classes) if c != NONE]
    for run in runs:
        held = [i for i in run.intervals if "pair" in i]
        if not held:
            continue
        onset, apex, flow = (np.stack(x) for x in zip(*(i.pop("pair") for i in held), strict=True))
        for interval, p in zip(held, np.asarray(classify(onset, apex, flow)), strict=True):
            interval["label"] = classes[int(np.argmax(p))]
            interval["probs"] = [round(float(x), 5) for x in p]
            # the best class that is an emotion: what is published without a veto
            interval["emotion"] = classes[emotions[int(np.argmax(p[emotions]))]]


def published(interval: dict, classes: list[str], veto: bool, min_confidence: float = 0.0) -> bool:
    """Whether the live recognizer publishes a recognized interval (`kernels.decide`, its
    rule): with `veto`, not when its most probable class is `NONE` nor when that class's
    probability is under `min_confidence`; without, always (as its best emotion)."""
    if not veto or "probs" not in interval:
        return True
    return decide(interval["probs"], classes, min_confidence)[2] is None


def chain(
    runs: list[VideoRun],
    truth: dict[str, list[Truth]],
    classes: list[str],
    veto: bool = True,
    min_confidence: float = 0.0,
) -> dict:
    """Spot-then-recognize (`mfvan.model.strs`) of recognized runs: pooled over the videos
    with bootstrap intervals (videos resampled), and per video. Only what is `published`
    counts (a vetoed spot is neither a true nor a false positive: it was never an event);
    recognition is scored over the emotion classes (`NONE` and `OTHERS` left out). Also
    `vetoed` (spots refused) and `false_per_minute` (published spots that are no
    micro-expression)."""
    from mfvan.model.strs import Labelled, bootstrap, score_str

    every_class, classes = list(classes), [c for c in classes if c not in (NONE, OTHERS)]
    spotted = _spotted_predictions(runs, truth, every_class)  # before the veto: every spot
    kept = [
        [i for i in run.intervals if published(i, classes, veto, min_confidence)] for run in runs
    ]
    vetoed = sum(len(run.intervals) - len(k) for run, k in zip(runs, kept, strict=True))
    runs = [replace(run, intervals=k) for run, k in zip(runs, kept, strict=True)]
    videos = [
        (
            [
                Labelled(i["onset"], i["offset"], i.get("emotion", i.get("label")))
                for i in run.intervals
            ],
            [
                Labelled(t.onset, t.offset, t.label)
                for t in truth.get(run.video, [])
                if t.kind == "micro"
            ],
        )
        for run in runs
    ]
    pooled = score_str(videos, classes)
    pooled["ci"] = bootstrap(videos, classes)
    from mfvan.model.calibration import ece, reliability

    # how far the confidence is from how often it is right, on the true positives
    tp_probs, tp_labels = _true_positive_predictions(runs, videos, every_class)
    pooled["ece"] = ece(tp_probs, tp_labels)
    pooled["reliability"] = reliability(tp_probs, tp_labels)
    # and on every spotted pair whose truth the recognizer has a class for (with a veto,
    # a spot on no micro-expression is right only as "none"): what it was calibrated on
    pooled["ece_spotted"] = ece(*spotted)
    pooled["vetoed"] = vetoed
    minutes = sum(run.frames / run.fps for run in runs) / 60
    pooled["false_per_minute"] = pooled["fp"] / minutes if minutes else float("nan")
    return {
        "pooled": pooled,
        "per_video": {
            run.video: score_str([v], classes) for run, v in zip(runs, videos, strict=True)
        },
    }


def spotted_pairs(
    long_dir: Path,
    classes: tuple[str, ...],
    size: int,
    cache_dir: Path | None = None,
    params=None,
    workers: int | None = None,
):
    """Training pairs as the live recognizer receives them: the spotter's own true
    positives in a folder of long videos (`LAYOUT`, with labels), each the pair the spot
    stage would have sent (its crops, area-resized to `size` as the recognizer's
    preprocessing resizes them, and their flow), labelled with the ground truth it matched
    (IoU >= 0.5; a match without a label in `classes` is left out). When `classes` holds
    `NONE`, every spot that overlaps no micro-expression (a blink, a key-frame pulse, a
    macro-expression's onset, a light change, a tracker jump) is a row of that class: what
    the recognizer's veto learns to refuse; a spot that overlaps one without matching it
    (a real movement, timed wrong) is neither, and left out. A matched micro-expression
    without a scored class is `OTHERS` when `classes` holds it. A folder whose identities
    use held-out portraits is refused. Subjects are named `<folder>/sub<N>`. Cached under
    `cache_dir`, keyed by the folder, its ground truth, the spotter's parameters and
    `size`."""
    import cv2

    from mfvan.kernels.motion import LIVE_CROP
    from mfvan.model.data.pairs import Pairs
    from mfvan.model.pipeline import refuse_held_out

    refuse_held_out(long_dir, "training on spotted pairs")
    truth = load_truth(check_layout(long_dir))
    runs = spot_runs(long_dir, params, workers, pairs=True, cache_dir=cache_dir)
    rows: dict[str, list] = {k: [] for k in ("onset", "apex", "motion", "labels", "subjects")}
    rows["names"] = []
    for run in runs:
        for i, label in enumerate(spot_labels(run, truth)):
            if label not in classes:
                continue
            onset, apex, flow = run.intervals[i]["pair"]
            for name, crop in (("onset", onset), ("apex", apex)):
                small = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
                rows[name].append(small[..., None])
            rows["motion"].append(flow)
            rows["labels"].append(classes.index(label))
            rows["subjects"].append(f"{long_dir.name}/{run.video.split('_')[0]}")
            rows["names"].append(f"{run.video}@{run.intervals[i]['onset']}")
    count = len(rows["labels"])
    arrays = {
        "onset": np.asarray(rows["onset"], np.uint8).reshape(count, size, size, 1),
        "apex": np.asarray(rows["apex"], np.uint8).reshape(count, size, size, 1),
        "labels": np.asarray(rows["labels"], np.int64),
        "subjects": np.asarray(rows["subjects"]),
        "names": np.asarray(rows["names"]),
        "found": np.ones(count, bool),
        "motion": np.asarray(rows["motion"], np.float16).reshape(count, LIVE_CROP, LIVE_CROP, 2),
        "sample": np.arange(count),
        "jittered": np.zeros(count, bool),
    }
    return Pairs(tuple(classes), **arrays)


def spot_runs(
    long_dir: Path,
    params=None,
    workers: int | None = 1,
    pairs: bool = False,
    cache_dir: Path | None = None,
) -> list[VideoRun]:
    """The spotter over every video of a folder in `LAYOUT` (`spot_video`, in `workers`
    processes; None: one per core). With `cache_dir`, the runs are kept there (pickled),
    keyed by the folder, its videos' sizes and times, the spotter's parameters and
    `pairs`: spotting a camera-like set takes minutes, classifying its pairs seconds."""
    import hashlib
    import pickle

    from mfvan.model.data.synth import _pool

    long_dir = check_layout(long_dir)
    videos = sorted(p for p in long_dir.iterdir() if p.suffix in (".mkv", ".mp4"))
    cache = None
    if cache_dir is not None:
        stats = [(v.name, v.stat().st_size, v.stat().st_mtime_ns) for v in videos]
        spec = json.dumps([str(long_dir.resolve()), stats, repr(params), pairs])
        key = hashlib.sha256(spec.encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"runs-{long_dir.name}-{key}.pkl"
        if cache.exists():
            return pickle.loads(cache.read_bytes())
    n = len(videos)
    with _pool(workers) as pool:
        runs = list(pool.map(_spot_one, [str(v) for v in videos], [params] * n, [pairs] * n))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(runs))
        tmp.replace(cache)
    return runs


def spot_labels(run: VideoRun, truth: dict[str, list[Truth]]) -> list[str | None]:
    """What each of a run's spots truly is: the label of the micro-expression it matched
    (IoU >= 0.5; `OTHERS` for one without a scored class), `NONE` for a spot that
    overlaps no micro-expression (the spotter's own false positive: a blink, a key-frame
    pulse, a macro-expression's onset, a light change, a tracker jump), None for one that
    overlaps a micro-expression without matching it (a real movement timed wrong: neither)."""
    micro = [t for t in truth.get(run.video, []) if t.kind == "micro"]
    spotted = [(i["onset"], i["offset"]) for i in run.intervals]
    matched = dict(match(spotted, [(t.onset, t.offset) for t in micro]))
    labels: list[str | None] = []
    for i, span in enumerate(spotted):
        if i in matched:
            labels.append(micro[matched[i]].label or OTHERS)
        elif not any(iou(span, (t.onset, t.offset)) > 0 for t in micro):
            labels.append(NONE)
        else:
            labels.append(None)
    return labels


def _spotted_predictions(runs, truth, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The recognizer's probabilities on every spot whose truth is one of `classes`
    (`spot_labels`), and that truth: the pairs the calibration was fitted on, as spotted."""
    probs, labels = [], []
    for run in runs:
        for interval, label in zip(run.intervals, spot_labels(run, truth), strict=True):
            if label in classes and "probs" in interval:
                probs.append(interval["probs"])
                labels.append(classes.index(label))
    return np.asarray(probs, np.float64).reshape(len(labels), -1), np.asarray(labels, int)


def _true_positive_predictions(runs, videos, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The recognizer's probabilities on the labelled true positives and their labels
    (live-like pairs: what its confidence is measured on)."""
    probs, labels = [], []
    for run, (predicted, truth) in zip(runs, videos, strict=True):
        for i, j in match(
            [(p.onset, p.offset) for p in predicted], [(t.onset, t.offset) for t in truth]
        ):
            if truth[j].label in classes and "probs" in run.intervals[i]:
                probs.append(run.intervals[i]["probs"])
                labels.append(classes.index(truth[j].label))
    return np.asarray(probs, np.float64).reshape(len(labels), -1), np.asarray(labels, int)


def evaluate(
    long_dir: Path,
    out: Path | None = None,
    params=None,
    workers: int | None = 1,
    traces: bool = True,
    recognizer: tuple[Callable, list[str]] | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Spot every video of a folder in `LAYOUT`; score; write `spotting.json` (scores,
    per-video counts, intervals) and, with `traces`, a trace PNG per video under `out`.
    `workers`: videos spotted in that many processes at once (None: one per core). With a
    `recognizer`, (classify, classes): a recognizer backend and its class names, every
    spotted interval is classified as the live pipeline would, and the result has `str`:
    spot-then-recognize (`chain`). `cache_dir`: keep the spotter's runs there
    (`spot_runs`)."""
    long_dir = check_layout(long_dir)
    truth = load_truth(long_dir)
    runs = spot_runs(long_dir, params, workers, recognizer is not None, cache_dir)
    per_video = [score_video(r, truth.get(r.video, [])) for r in runs]
    result = pool_scores(per_video)
    if recognizer is not None:
        classify, classes = recognizer
        recognize(runs, classify, list(classes))
        result["str"] = chain(runs, truth, list(classes))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if traces:
            for run in runs:
                plot_trace(run, truth.get(run.video, []), out / f"{Path(run.video).stem}.png")
        (out / "spotting.json").write_text(
            json.dumps(
                {
                    "score": result,
                    "per_video": per_video,
                    "intervals": {r.video: r.intervals for r in runs},
                },
                indent=2,
            )
            + "\n"
        )
    return result


def format_chain(r: dict) -> str:
    """The spot-then-recognize lines of `chain`'s result."""
    p = r["pooled"]
    ci = p["ci"]
    lines = [
        f"spot-then-recognize (MEGC STR): spotting TP {p['tp']} FP {p['fp']} FN {p['fn']}, "
        f"P {p['precision']:.3f} R {p['recall']:.3f} F1 {p['f1']:.3f} "
        f"[{ci['f1'][0]:.3f}, {ci['f1'][1]:.3f}]",
        f"  recognition on {p['recognized']} labelled true positives: UF1 {p['uf1']:.3f} "
        f"[{ci['uf1'][0]:.3f}, {ci['uf1'][1]:.3f}]  UAR {p['uar']:.3f}  expected "
        f"calibration error {p['ece']:.3f}",
        f"  STRS {p['strs']:.3f} [{ci['strs'][0]:.3f}, {ci['strs'][1]:.3f}] "
        "(95% bootstrap over videos)",
        "  per video:",
    ]
    for video, v in r["per_video"].items():
        lines.append(
            f"    {video}: TP {v['tp']} FP {v['fp']} FN {v['fn']}  F1 {v['f1']:.3f}  "
            f"UF1 {v['uf1']:.3f} ({v['recognized']})  STRS {v['strs']:.3f}"
        )
    return "\n".join(lines)


def one_line(r: dict) -> str:
    ci = r.get("f1_ci")
    ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return (
        f"F1 {r['f1']:.3f}{ci_text}  P {r['precision']:.2f} R {r['recall']:.2f}  "
        f"false/min {r['fp_per_minute']:.2f}  apex err {r['apex_error_ms']:.0f} ms  "
        f"apex->emit p50 {r['latency_ms']:.0f} ms  ({r['micro']} micro)"
    )


def format_score(r: dict) -> str:
    fp = ", ".join(f"{k} {v:.2f}" for k, v in r["fp_causes_per_minute"].items())
    return (
        f"{r['micro']} micro-expressions in {r['videos']} videos; {r['predicted']} spotted, "
        f"{r['tp']} right (IoU >= 0.5)\n"
        f"precision {r['precision']:.3f}  recall {r['recall']:.3f}  F1 {r['f1']:.3f}  "
        f"apex error {r['apex_error_ms']:.1f} ms  apex->emit p50 {r['latency_ms']:.0f} ms\n"
        f"false spots per minute {r['fp_per_minute']:.2f}, by cause: {fp}\n"
        f"rejected by the spotter: {r['rejected']}"
    )
