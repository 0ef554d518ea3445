"""(onset, apex) pairs ready for a network: aligned face crops, cached on disk.

For each sample the face is found and aligned on the onset frame (`mfvan.kernels.faces`,
the code the live spotter uses) and the same crop is applied to the apex, so the motion
between them survives cropping. A frame where no face is found is centre-cropped, and
counted. Pairs are cached as one `.npz` per (dataset, samples, preprocessing settings):
the key is a hash of all of them, so changing any setting never reuses a stale cache.

MFVAN's motion input (`Pairs.motion`) is the spotter's own measurement of each pair,
`mfvan.kernels.motion.pair_flow`, taken on crops of the live pipeline's size (`LIVE_CROP`,
128 px, cut with the same box) exactly as the spot stage takes it on the crops it sends;
the network's preprocessing (`mfvan.model.mfvan.preprocess_motion`) does the rest.

The flow baseline's input (OFF-ApexNet style) is OpenCV's Farneback flow on the grey crops
(a standard flow, as the baseline's authors used; not the spotter's) and its optical
strain (`mfvan.kernels.signals.optical_strain`).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from mfvan.kernels.faces import FaceDetector, centre_crop, make_crop, to_grey
from mfvan.kernels.motion import LIVE_CROP, pair_flow
from mfvan.kernels.signals import optical_strain
from mfvan.model.data.datasets import Dataset

# 2: area-filtered crops; 3: anchored on the eyes; 4: filter the face only; 5: motion,
# jittered rows
CACHE_VERSION = 5


@dataclass
class Pairs:
    classes: tuple[str, ...]
    onset: np.ndarray  # (N, S, S, C) uint8
    apex: np.ndarray  # (N, S, S, C) uint8
    labels: np.ndarray  # (N,) int64
    subjects: np.ndarray  # (N,) str
    names: np.ndarray  # (N,) str
    found: np.ndarray  # (N,) bool: a face was detected (else centre crop)
    motion: np.ndarray | None = None  # (N, LIVE_CROP, LIVE_CROP, 2) float16: pair_flow
    flow: np.ndarray | None = None  # (N, 3, S, S) float32: u, v, optical strain (Farneback)
    sample: np.ndarray | None = None  # (N,) int: the annotated sample a row was cut from
    jittered: np.ndarray | None = None  # (N,) bool: onset and apex moved as a spotter's are

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> Pairs:
        return Pairs(
            **{
                f.name: value if f.name == "classes" or value is None else value[index]
                for f in fields(self)
                for value in [getattr(self, f.name)]
            }
        )

    def annotated(self) -> Pairs:
        """The rows at the annotated onset and apex (all of them without jitter)."""
        return self if self.jittered is None else self.subset(~self.jittered)

    def spotted(self) -> Pairs:
        """The rows with a spotter's onset and apex error (none without jitter)."""
        keep = np.zeros(len(self), bool) if self.jittered is None else self.jittered
        return self.subset(keep)

    def __add__(self, other: Pairs) -> Pairs:
        """Both sets' rows (same classes, same crop size; `sample` kept distinct)."""
        if self.classes != other.classes or self.onset.shape[1:] != other.onset.shape[1:]:
            raise ValueError("pairs of different classes or crop sizes cannot be joined")
        joined = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "classes":
                continue
            if f.name == "sample":
                b = b + (0 if a is None or not len(a) else int(a.max()) + 1)
            joined[f.name] = None if a is None or b is None else np.concatenate([a, b])
        return Pairs(self.classes, **joined)


CACHED = ("onset", "apex", "labels", "subjects", "names", "found", "motion", "sample", "jittered")


@dataclass(frozen=True)
class Jitter:
    """Rows added per sample whose onset and apex each move by an integer number of frames
    drawn uniformly from -frames..frames (the onset kept before the apex, both on frames
    the sample has): what the live recognizer receives, since it classifies the spotter's
    (onset, apex), not the annotated one. Measured on SynthME's long videos at 200 fps
    (`mfvan spot-eval`, the true positives of the shipped spotter): onset and apex errors
    within -4..+3 and -5..+4 frames (5th-95th percentile -4..+3 and -3..+4), so `frames`
    5 (25 ms at 200 fps) by default. Drawn with a seed of the sample's name: the same rows
    every time."""

    copies: int = 2
    frames: int = 5


def _frame_number(path: Path) -> tuple[str, int, int]:
    """(the name before its number, the number, its zero-padded width or 0) of a frame file
    whose name ends with its frame number (img46.jpg, 006_1_2_5562.jpg, 000123.png)."""
    stem = path.stem
    digits = len(stem) - len(stem.rstrip("0123456789"))
    if not digits:
        raise ValueError(f"{path}: no frame number at the end of its name")
    return stem[:-digits], int(stem[-digits:]), digits if stem[-digits] == "0" else 0


def _neighbour(path: Path, delta: int) -> Path:
    """The frame `delta` frames after `path` in its folder (img46.jpg -> img48.jpg)."""
    prefix, number, width = _frame_number(path)
    return path.with_name(f"{prefix}{number + delta:0{width}d}{path.suffix}")


def _jittered(sample, jitter: Jitter) -> list[tuple[Path, Path]]:
    """`jitter.copies` (onset, apex) frame paths near the sample's, as a spotter finds them
    (none when its frames are not numbered files)."""
    rng = np.random.default_rng(zlib.crc32(f"{sample.subject}/{sample.name}".encode()))
    try:
        rise = _frame_number(sample.apex)[1] - _frame_number(sample.onset)[1]
    except ValueError:
        return []
    out = []
    for _ in range(jitter.copies * 10):  # draws that leave the clip or cross are drawn again
        if len(out) == jitter.copies:
            break
        d_onset, d_apex = (int(d) for d in rng.integers(-jitter.frames, jitter.frames + 1, 2))
        onset, apex = _neighbour(sample.onset, d_onset), _neighbour(sample.apex, d_apex)
        moved = d_onset or d_apex
        if moved and rise + d_apex - d_onset >= 1 and onset.exists() and apex.exists():
            out.append((onset, apex))
    return out


def _cache_key(data: Dataset, size: int, channels: int, scale: float, jitter) -> str:
    spec = {
        "version": CACHE_VERSION,
        "dataset": data.name,
        "classes": data.classes,
        "samples": [(s.subject, s.name, str(s.onset), str(s.apex), s.label) for s in data.samples],
        "size": size,
        "channels": channels,
        "scale": scale,
        "detector": "haar default then alt2, haar eyes, eye-anchored crop",
        "jitter": None if jitter is None else [jitter.copies, jitter.frames],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _read(path: Path, channels: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: not a readable image")
    return img if channels == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _cut(shape: tuple, box, eyes, side: int, scale: float):
    """The aligned crop of `side` px (the centred one when no face was found)."""
    return make_crop(box, side, eyes, scale) if box is not None else centre_crop(shape, side)


def build_pairs(
    data: Dataset,
    size: int,
    channels: int = 1,
    cache_dir: Path | None = None,
    scale: float = 1.2,
    progress: bool = False,
    jitter: Jitter | None = None,
) -> Pairs:
    """Aligned crops of every sample of `data` (cached under `cache_dir` when given); with
    `jitter`, also its jittered rows (`Pairs.jittered`), each cropped with its sample's
    box (found on the annotated onset, as the tracker holds one box over an interval)."""
    from tqdm import tqdm

    cache = None
    if cache_dir is not None:
        key = _cache_key(data, size, channels, scale, jitter)
        cache = Path(cache_dir) / f"{data.name}-{key}.npz"
        if cache.exists():
            with np.load(cache) as z:
                return Pairs(tuple(z["classes"].tolist()), **{k: z[k] for k in CACHED})
    detector = FaceDetector()
    rows: dict[str, list] = {k: [] for k in CACHED}
    for i, s in enumerate(tqdm(data.samples, desc=f"cropping {data.name}", disable=not progress)):
        first = _read(s.onset, channels)
        box = detector.detect(first)
        eyes = detector.eyes(first, box) if box is not None else None
        crop, live = (_cut(first.shape, box, eyes, side, scale) for side in (size, LIVE_CROP))
        frames = [(s.onset, s.apex), *(_jittered(s, jitter) if jitter else [])]
        for k, (onset_path, apex_path) in enumerate(frames):
            onset = first if k == 0 else _read(onset_path, channels)
            apex = _read(apex_path, channels)
            rows["onset"].append(crop.apply(onset).reshape(size, size, channels))
            rows["apex"].append(crop.apply(apex).reshape(size, size, channels))
            # the motion as the spot stage measures it: on grey crops of the live size
            flow = pair_flow(to_grey(live.apply(onset)), to_grey(live.apply(apex)))
            rows["motion"].append(flow.astype(np.float16))
            rows["labels"].append(s.label)
            rows["subjects"].append(s.subject)
            rows["names"].append(s.name)
            rows["found"].append(box is not None)
            rows["sample"].append(i)
            rows["jittered"].append(k > 0)
    dtypes = {"labels": np.int64, "sample": np.int64, "found": bool, "jittered": bool}
    arrays = {k: np.asarray(v, dtypes.get(k)) for k, v in rows.items()}
    pairs = Pairs(data.classes, **arrays)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, classes=np.array(pairs.classes), **arrays)
    return pairs


def flow_features(onset: np.ndarray, apex: np.ndarray) -> np.ndarray:
    """OFF-ApexNet's input: horizontal and vertical Farneback flow and optical strain,
    (N, 3, S, S) float32, from uint8 crops (N, S, S, C)."""
    out = []
    for a, b in zip(onset, apex, strict=True):
        a, b = (to_grey(x[..., 0] if x.shape[-1] == 1 else x) for x in (a, b))
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)
        out.append(np.stack([flow[..., 0], flow[..., 1], optical_strain(flow)]))
    return np.asarray(out, np.float32)
