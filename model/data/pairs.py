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
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mfvan.kernels.faces import FaceDetector, centre_crop, make_crop, to_grey
from mfvan.kernels.motion import LIVE_CROP, pair_flow
from mfvan.kernels.signals import optical_strain
from mfvan.model.data.datasets import Dataset

# 2: area-filtered crops; 3: anchored on the eyes; 4: filter the face only; 5: motion
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

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> Pairs:
        return Pairs(
            self.classes,
            self.onset[index],
            self.apex[index],
            self.labels[index],
            self.subjects[index],
            self.names[index],
            self.found[index],
            None if self.motion is None else self.motion[index],
            None if self.flow is None else self.flow[index],
        )


def _cache_key(data: Dataset, size: int, channels: int, scale: float) -> str:
    spec = {
        "version": CACHE_VERSION,
        "dataset": data.name,
        "classes": data.classes,
        "samples": [(s.subject, s.name, str(s.onset), str(s.apex), s.label) for s in data.samples],
        "size": size,
        "channels": channels,
        "scale": scale,
        "detector": "haar default then alt2, haar eyes, eye-anchored crop",
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
) -> Pairs:
    """Aligned crops of every sample of `data` (cached under `cache_dir` when given)."""
    from tqdm import tqdm

    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{data.name}-{_cache_key(data, size, channels, scale)}.npz"
        if cache.exists():
            with np.load(cache) as z:
                return Pairs(
                    tuple(z["classes"].tolist()),
                    z["onset"],
                    z["apex"],
                    z["labels"],
                    z["subjects"],
                    z["names"],
                    z["found"],
                    z["motion"],
                )
    detector = FaceDetector()
    onsets, apexes, found, motion = [], [], [], []
    for s in tqdm(data.samples, desc=f"cropping {data.name}", disable=not progress):
        onset, apex = _read(s.onset, channels), _read(s.apex, channels)
        box = detector.detect(onset)
        eyes = detector.eyes(onset, box) if box is not None else None
        crop, live = (_cut(onset.shape, box, eyes, side, scale) for side in (size, LIVE_CROP))
        onsets.append(crop.apply(onset).reshape(size, size, channels))
        apexes.append(crop.apply(apex).reshape(size, size, channels))
        found.append(box is not None)
        # the motion as the spot stage measures it: on grey crops of the live size
        motion.append(
            pair_flow(to_grey(live.apply(onset)), to_grey(live.apply(apex))).astype(np.float16)
        )
    pairs = Pairs(
        data.classes,
        np.stack(onsets),
        np.stack(apexes),
        np.array([s.label for s in data.samples], np.int64),
        np.array([s.subject for s in data.samples]),
        np.array([s.name for s in data.samples]),
        np.array(found),
        np.stack(motion),
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            classes=np.array(pairs.classes),
            onset=pairs.onset,
            apex=pairs.apex,
            labels=pairs.labels,
            subjects=pairs.subjects,
            names=pairs.names,
            found=pairs.found,
            motion=pairs.motion,
        )
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
