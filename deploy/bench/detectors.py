"""`mfvan bench detectors`: face detectors with landmarks, side by side on SynthME scene
frames: recall by face size, eye error, cost per frame.

Frames: 640 x 480 (a camera's VGA), one person each (`model.data.scenes`: the held-out
portraits' morphs, camera noise, the realistic mode's skin), at face heights from 48 to
260 px and random places, rendered on held-out seeds. Ground truth: the face's box and
its eye centres (the identity's landmark fields, measured on the morph by a landmark model,
placed where the scene puts the face).

Detectors, each searching the whole frame on one core:

- `haar`: OpenCV's frontal-face Haar cascades (today's `kernels.faces.FaceDetector`),
  the eyes by its eye cascade inside the box, with its smallest face lowered to 40 px
  here so that its recall by size is measured at every size;
- `haar (as configured)`: the same with the tracker's own smallest face (20% of the
  frame's shorter side: 96 px on VGA), which a live stream uses;
- `dlib HOG`: dlib's HOG + linear SVM frontal detector (`dlib-bin`), no upsampling (faces
  from about 80 px), its eyes the centres of the 68-point shape predictor's eye landmarks
  (`face-recognition-models`);
- `dlib HOG x2`: the same with one upsampling (faces from about 40 px, at four times the
  cost).

A face is found when a detection's centre lies within 30% of the face's height of the
truth's; the eye error is the mean distance of the two eye centres from the truth's, in %
of the distance between the eyes, over faces whose eyes the detector gave. dlib is a
development dependency (`pip install -e .[dev]`); without it its rows say so.
"""

from __future__ import annotations

import math
import time

import numpy as np

from mfvan.deploy.bench import cpu_name

SIZES = (48, 64, 80, 110, 150, 200, 260)  # px, face height (forehead to chin)
FRAME = (480, 640)


def scene_faces(per_size: int = 8, seed: int = 31):
    """(grey frame, face height, truth box (x, y, w, h), truth eyes ((lx, ly), (rx, ry)))
    for `per_size` frames at each of `SIZES`."""
    from mfvan.kernels.faces import to_grey
    from mfvan.model.data import scenes, synth

    config = synth.CONFIGS["morph-heldout"]
    rng = np.random.default_rng(seed)
    out = []
    for size in SIZES:
        for k in range(per_size):
            cx = float(rng.uniform(size, FRAME[1] - size))
            cy = float(rng.uniform(0.7 * size, FRAME[0] - 0.7 * size))
            person = scenes.Person(1 + k % 8, float(size), scenes.Route(((0.0, cx, cy),)))
            layout = scenes.Scene("one", FRAME, (person,), 1.0)
            scene = scenes.SceneStream(config, layout, seed=seed + k, video=size)
            image = to_grey(scene.frame(int(rng.integers(0, 100))).image)
            ident = scene.layers[0].stream.renderer.identity
            ((box, _),) = scene.boxes(0)
            eyes = (
                (cx - ident.eye_dx * size, cy + ident.eye_y * size),
                (cx + ident.eye_dx * size, cy + ident.eye_y * size),
            )
            out.append((image, size, box, eyes))
    return out


class Haar:
    def __init__(self, min_px: int | None):
        from mfvan.kernels.faces import FaceDetector

        self.detector = FaceDetector()
        if min_px is not None:
            self.detector.min_size_fraction = min_px / min(FRAME)

    def __call__(self, grey):
        return [(b, self.detector.eyes(grey, b)) for b in self.detector.detect_all(grey)]


class DlibHog:
    def __init__(self, upsample: int):
        from mfvan.model.data.portraits import _predictor

        self.detector, self.predictor = _predictor()
        self.upsample = upsample

    def __call__(self, grey):
        from mfvan.kernels.faces import Box

        out = []
        for r in self.detector(grey, self.upsample):
            shape = self.predictor(grey, r)
            pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
            left, right = pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)
            box = Box(float(r.left()), float(r.top()), float(r.width()), float(r.height()))
            out.append((box, (tuple(left), tuple(right))))
        return out


def detectors() -> dict:
    """The detectors compared, by name (a string where one cannot run here: why)."""
    found: dict = {"haar": Haar(40), "haar (as configured)": Haar(None)}
    for name, up in (("dlib HOG", 0), ("dlib HOG x2", 1)):
        try:
            found[name] = DlibHog(up)
        except ImportError as e:
            found[name] = str(e)
    return found


def _score(detections, size, box, eyes):
    """(found, eye error in % of the eye distance or None)."""
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    near = [
        (b, e) for b, e in detections if math.hypot(b.centre[0] - cx, b.centre[1] - cy) < 0.3 * size
    ]
    if not near:
        return False, None
    b, e = min(near, key=lambda d: math.hypot(d[0].centre[0] - cx, d[0].centre[1] - cy))
    if e is None:
        return True, None
    gap = math.dist(*eyes)
    err = (math.dist(e[0], eyes[0]) + math.dist(e[1], eyes[1])) / 2
    return True, 100.0 * err / gap


def bench_detectors(per_size: int = 8) -> dict:
    """Recall by face size, eye error (median, 90th percentile), ms per whole frame."""
    import cv2

    cv2.setNumThreads(1)
    faces = scene_faces(per_size)
    rows = {}
    for name, det in detectors().items():
        if isinstance(det, str):
            rows[name] = {"unavailable": det}
            continue
        by_size = {s: [] for s in SIZES}
        errors, seconds = [], []
        for grey, size, box, eyes in faces:
            started = time.perf_counter()
            found = det(grey)
            seconds.append(time.perf_counter() - started)
            hit, err = _score(found, size, box, eyes)
            by_size[size].append(hit)
            if err is not None:
                errors.append(err)
        rows[name] = {
            "recall": {s: float(np.mean(v)) for s, v in by_size.items()},
            "eyes": len(errors),
            "eye_error_p50": float(np.median(errors)) if errors else float("nan"),
            "eye_error_p90": float(np.percentile(errors, 90)) if errors else float("nan"),
            "ms": 1000 * float(np.median(seconds)),
        }
    return {"machine": cpu_name(), "per_size": per_size, "rows": rows}


def format_detectors_report(r: dict) -> str:
    head = " | ".join(f"{s} px" for s in SIZES)
    lines = [
        f"Face detectors on {r['per_size']} SynthME scene frames per face size (640 x 480, "
        f"held-out portraits), one core of {r['machine']}",
        "",
        f"| detector | recall at face height {head} | eyes given | eye error p50 / p90 "
        "(% of eye distance) | ms per frame (median) |",
        "|---" * (len(SIZES) + 4) + "|",
    ]
    for name, row in r["rows"].items():
        if "unavailable" in row:
            lines.append(f"| {name} | not run: {row['unavailable']} |")
            continue
        recall = " | ".join(f"{row['recall'][s]:.2f}" for s in SIZES)
        lines.append(
            f"| {name} | {recall} | {row['eyes']} | {row['eye_error_p50']:.1f} / "
            f"{row['eye_error_p90']:.1f} | {row['ms']:.1f} |"
        )
    return "\n".join(lines)
