"""Real faces for SynthME, never a real person on screen: shipped portraits, their landmarks,
and landmark-aligned morphs of two or three of them.

The portraits (`portraits/`, listed in `portraits/portraits.csv` with their checksums) are
official photographs of former members of the US Congress from the Congressional
Biographical Directory, works of the US government and so in the public domain, as
gathered by the public repository voteview/member_photos (`images/bio_guide/`); see
docs/datasets.md, "Portraits", for the licence table. They give SynthME what a parametric
face lacks: real skin, shape, ageing and lighting from many people.

No generated face is one of them. An identity is a **morph**: each of two or three portraits
is aligned (eyes level, fixed eye positions), warped so that its 68 landmarks land on a
weighted mean shape (thin-plate spline), and the warped textures are blended with other
weights (shape mostly from one portrait, texture mostly from another). Then it is
augmented: skin tone and contrast (gains, gamma), lighting direction (a shading ramp),
a small yaw and pitch (a homography of the face plane), glasses (drawn frames) on some.
Chosen and not done: partial occlusion (a hand over the face) is left out, because an
occluder over an action unit's region would make its label wrong.

The split is fixed in the manifest (`split`: train or heldout), chosen once by a hash of
each portrait's id: a morph draws its portraits from one split only, and
`check_training_sources` refuses a data set whose identities use a held-out portrait
wherever training, calibration or model choice would read it.

Landmarks were placed by dlib's 68-point shape predictor (`face_recognition_models`,
trained on iBUG 300-W, whose licence excludes commercial use: the model is a development
tool here, only its output points are shipped) after dlib's HOG face detector;
`landmarks_from_image` re-runs it (`pip install dlib-bin face-recognition-models`), and
`python -m mfvan.model.data.portraits` rewrites `landmarks.json` from the images.

Imports nothing of this project.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

PORTRAIT_DIR = Path(__file__).with_name("portraits")
MANIFEST = PORTRAIT_DIR / "portraits.csv"
LANDMARKS = PORTRAIT_DIR / "landmarks.json"
SPLITS = ("train", "heldout")
LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"

# The canonical frame every portrait is aligned to before morphing (px): eyes level, the
# midpoint of the eye centres at EYE_MID, the eye centres EYE_DISTANCE apart (about twice
# the portraits' own size, so the alignment enlarges a little and never discards detail).
CANVAS = (400, 320)  # (height, width)
EYE_MID = (160.0, 170.0)
EYE_DISTANCE = 64.0

# the 68-point scheme (iBUG 300-W): which points are what
JAW, BROW_R, BROW_L, NOSE_BRIDGE, NOSE_BASE = (
    slice(0, 17),
    slice(17, 22),
    slice(22, 27),
    slice(27, 31),
    slice(31, 36),
)
EYE_R, EYE_L, MOUTH_OUTER = slice(36, 42), slice(42, 48), slice(48, 60)
CHIN, NOSE_TIP, MOUTH_CORNER_R, MOUTH_CORNER_L = 8, 30, 48, 54


@dataclass(frozen=True)
class Portrait:
    id: str
    split: str
    path: Path
    sha256: str


def portraits(split: str | None = None) -> list[Portrait]:
    """The shipped portraits (of `split`, or all), in the manifest's order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    with open(MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        Portrait(r["id"], r["split"], PORTRAIT_DIR / r["file"], r["sha256"])
        for r in rows
        if split is None or r["split"] == split
    ]


def verify() -> None:
    """Every shipped portrait is the file its manifest row names (sha256), or ValueError."""
    for p in portraits():
        digest = hashlib.sha256(p.path.read_bytes()).hexdigest()
        if digest != p.sha256:
            raise ValueError(f"{p.path} does not match its manifest checksum")


@lru_cache(maxsize=1)
def _landmarks() -> dict[str, np.ndarray]:
    raw = json.loads(LANDMARKS.read_text())
    return {k: np.asarray(v, np.float64) for k, v in raw["points"].items()}


def landmarks(portrait_id: str) -> np.ndarray:
    """The 68 landmarks (x, y) of a shipped portrait, in its own pixels."""
    return _landmarks()[portrait_id].copy()


@cache
def image(portrait_id: str) -> np.ndarray:
    """A shipped portrait as float32 RGB in [0, 1]."""
    import cv2

    path = PORTRAIT_DIR / f"{portrait_id}.jpg"
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: no such portrait (see {MANIFEST})")
    return (bgr[..., ::-1] / np.float32(255)).astype(np.float32)


# ----------------------------------------------------------------------------- landmarks


def _predictor():
    """dlib's HOG face detector and 68-point shape predictor, or ImportError saying what
    to install."""
    import importlib.util

    try:
        import dlib
    except ImportError as e:
        raise ImportError(
            "placing landmarks needs dlib: pip install dlib-bin face-recognition-models"
        ) from e
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "placing landmarks needs dlib's models: pip install face-recognition-models"
        )
    # the package's __init__ needs pkg_resources; its data file is all we read
    model = Path(spec.submodule_search_locations[0]) / "models" / LANDMARK_MODEL
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))


def landmarks_from_image(rgb: np.ndarray) -> np.ndarray:
    """The 68 landmarks (x, y) of the one face in an RGB image (uint8 or float in [0, 1]),
    by dlib's detector and shape predictor; ValueError unless exactly one face is found."""
    detector, predictor = _predictor()
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(rgb)
    faces = detector(rgb, 1)
    if len(faces) != 1:
        raise ValueError(f"expected one face, found {len(faces)}")
    shape = predictor(rgb, faces[0])
    return np.array([[p.x, p.y] for p in shape.parts()], np.float64)


def write_landmarks() -> Path:
    """Place every shipped portrait's landmarks with the model and write `landmarks.json`."""
    import dlib

    points = {}
    for p in portraits():
        points[p.id] = landmarks_from_image(image(p.id)).round(1).tolist()
    LANDMARKS.write_text(
        json.dumps(
            {
                "model": f"dlib {dlib.__version__} frontal_face_detector (upsample 1) + "
                f"{LANDMARK_MODEL} (face_recognition_models)",
                "points": points,
            },
            indent=None,
        )
        + "\n"
    )
    return LANDMARKS


# ----------------------------------------------------------------------------- morphs


def _eyes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centres of the eye in the image's left and right halves."""
    return points[EYE_R].mean(0), points[EYE_L].mean(0)


def _align(points: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity that puts a face's eyes level at the canonical positions."""
    left, right = _eyes(points)
    d = right - left
    scale = EYE_DISTANCE / np.hypot(*d)
    angle = -np.arctan2(d[1], d[0])
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    mid = (left + right) / 2
    shift = np.asarray(EYE_MID) - rot @ mid
    return np.hstack([rot, shift[:, None]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _frame_anchors() -> np.ndarray:
    """Points on the canvas border that every warp keeps in place."""
    h, w = CANVAS
    xs, ys = np.linspace(0, w - 1, 5), np.linspace(0, h - 1, 6)
    border = [(x, 0) for x in xs] + [(x, h - 1) for x in xs]
    border += [(0, y) for y in ys[1:-1]] + [(w - 1, y) for y in ys[1:-1]]
    return np.asarray(border, np.float64)


def _warp_to(img: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`img` (on the canvas) warped so that its points `src` land on `dst`: a thin-plate
    spline from `dst` to `src` (the backward map), evaluated every 4 px and interpolated."""
    import cv2
    from scipy.interpolate import RBFInterpolator

    anchors = _frame_anchors()
    spline = RBFInterpolator(
        np.vstack([dst, anchors]),
        np.vstack([src, anchors]),
        kernel="thin_plate_spline",
        smoothing=1.0,
    )
    h, w = CANVAS
    step = 4
    gy, gx = np.mgrid[0 : h + step : step, 0 : w + step : step].astype(np.float64)
    coarse = spline(np.column_stack([gx.ravel(), gy.ravel()])).reshape(*gx.shape, 2)
    coarse = coarse.astype(np.float32)
    # pixel (x, y) lies at grid coordinates (x / step, y / step): bilinear between nodes
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(step)
    map_x = cv2.remap(np.ascontiguousarray(coarse[..., 0]), xs, ys, cv2.INTER_LINEAR)
    map_y = cv2.remap(np.ascontiguousarray(coarse[..., 1]), xs, ys, cv2.INTER_LINEAR)
    return cv2.remap(img, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


@dataclass(frozen=True)
class MorphRecipe:
    """Which portraits make a morph and how: shape weights, texture weights, augmentation."""

    split: str
    sources: tuple[str, ...]
    shape_weights: tuple[float, ...]
    texture_weights: tuple[float, ...]
    gains: tuple[float, float, float]
    gamma: float
    light: tuple[float, float]  # direction (radians) and strength of the shading ramp
    yaw: float  # radians
    pitch: float
    glasses: bool

    @classmethod
    def draw(cls, split: str, subject: int, seed: int) -> MorphRecipe:
        """Subject `subject`'s recipe for `seed`, from portraits of `split` only."""
        pool = portraits(split)
        rng = np.random.default_rng([seed, subject, 0x30F])
        count = 3 if rng.random() < 0.3 else 2
        chosen = rng.choice(len(pool), size=count, replace=False)
        shape = rng.dirichlet(np.full(count, 0.6))
        shape[0] += 1.0  # shape mostly from the first portrait
        texture = rng.dirichlet(np.full(count, 0.6))
        texture[1] += 1.0  # texture mostly from the second
        return cls(
            split=split,
            sources=tuple(pool[i].id for i in chosen),
            shape_weights=tuple((shape / shape.sum()).round(4).tolist()),
            texture_weights=tuple((texture / texture.sum()).round(4).tolist()),
            gains=tuple(float(g) for g in rng.uniform(0.7, 1.15) * rng.normal(1.0, 0.04, 3)),
            gamma=float(rng.uniform(0.75, 1.35)),
            light=(float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(0.0, 0.35))),
            yaw=float(rng.uniform(-0.14, 0.14)),
            pitch=float(rng.uniform(-0.08, 0.08)),
            glasses=bool(rng.random() < 0.25),
        )


def _homography(yaw: float, pitch: float) -> np.ndarray:
    """The face plane turned by `yaw` and `pitch` (a camera of focal length four canvas
    widths turning about its centre, then shifted back so the eye midpoint stays put)."""
    f = 4.0 * CANVAS[1]
    cx, cy = EYE_MID
    k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    cyw, syw, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    rot = np.array([[cyw, 0, syw], [0, 1, 0], [-syw, 0, cyw]]) @ np.array(
        [[1, 0, 0], [0, cp, -sp], [0, sp, cp]]
    )
    hom = k @ rot @ np.linalg.inv(k)
    # keep the eye midpoint where it was: the face turns, it does not slide off the canvas
    moved = hom @ np.array([cx, cy, 1.0])
    dx, dy = cx - moved[0] / moved[2], cy - moved[1] / moved[2]
    shift = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]])
    return shift @ hom


def _draw_glasses(img: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> None:
    import cv2

    colour = tuple(float(c) for c in rng.uniform(0.02, 0.25) * np.ones(3))
    thick = int(rng.integers(2, 4))
    left, right = _eyes(points)
    half = EYE_DISTANCE * np.array([0.34, 0.24])
    for centre in (left, right):
        cv2.ellipse(
            img,
            (int(round(centre[0] * 8)), int(round(centre[1] * 8))),
            (int(half[0] * 8), int(half[1] * 8)),
            0,
            0,
            360,
            colour,
            thick,
            cv2.LINE_AA,
            3,
        )
    inner = [(left + (right - left) * 0.17), (right - (right - left) * 0.17)]
    cv2.line(
        img,
        tuple(int(round(v * 8)) for v in inner[0]),
        tuple(int(round(v * 8)) for v in inner[1]),
        colour,
        thick,
        cv2.LINE_AA,
        3,
    )


@dataclass(frozen=True)
class Morph:
    """A morphed face on the canonical canvas: float32 RGB in [0, 1] and its 68 landmarks."""

    recipe: MorphRecipe
    image: np.ndarray
    points: np.ndarray


@lru_cache(maxsize=64)
def morph(recipe: MorphRecipe) -> Morph:
    """The face a recipe makes (deterministic)."""
    import cv2

    h, w = CANVAS
    aligned, shapes = [], []
    for pid in recipe.sources:
        pts = landmarks(pid)
        m = _align(pts)
        aligned.append(
            cv2.warpAffine(
                image(pid), m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
            )
        )
        shapes.append(_apply(m, pts))
    target = sum(wt * s for wt, s in zip(recipe.shape_weights, shapes, strict=True))
    face = sum(
        wt * _warp_to(img, s, target)
        for wt, img, s in zip(recipe.texture_weights, aligned, shapes, strict=True)
    ).astype(np.float32)
    # lighting direction: a ramp across the face, brighter towards the light
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, strength = recipe.light
    ramp = (xs - EYE_MID[0]) * np.cos(angle) + (ys - EYE_MID[1]) * np.sin(angle)
    ramp /= 2.5 * EYE_DISTANCE
    face *= (1.0 + strength * np.clip(ramp, -1, 1))[..., None]
    face = np.clip(face, 0, 1) ** np.float32(recipe.gamma) * np.asarray(recipe.gains, np.float32)
    face = np.clip(face, 0, 1).astype(np.float32)
    if recipe.glasses:
        _draw_glasses(
            face,
            target,
            np.random.default_rng(
                int(hashlib.sha256("".join(recipe.sources).encode()).hexdigest()[:8], 16)
            ),
        )
    hom = _homography(recipe.yaw, recipe.pitch)
    face = cv2.warpPerspective(
        face, hom, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    moved = cv2.perspectiveTransform(target[None].astype(np.float64), hom)[0]
    return Morph(recipe, face, moved)


def geometry(points: np.ndarray) -> tuple[tuple[float, float], float, dict[str, float]]:
    """From 68 landmarks: the face centre (px), its height (px, chin to the top of the
    forehead) and the landmark fields of a SynthME identity (face-height units), in
    SynthME's convention (eyes 0.08 face heights above the centre, the chin 0.44 below)."""
    left, right = _eyes(points)
    eye_y = (left[1] + right[1]) / 2
    height = (points[CHIN, 1] - eye_y) / 0.52
    centre = ((left[0] + right[0]) / 2, eye_y + 0.08 * height)
    brow_r, brow_l = points[BROW_R], points[BROW_L]
    brow_y = (brow_r[:, 1].mean() + brow_l[:, 1].mean()) / 2
    eye_w = (
        (points[39, 0] - points[36, 0]) + (points[45, 0] - points[42, 0])
    ) / 4  # half widths, averaged
    eye_h = (
        (points[[40, 41], 1].mean() - points[[37, 38], 1].mean())
        + (points[[46, 47], 1].mean() - points[[43, 44], 1].mean())
    ) / 4
    corners = points[[MOUTH_CORNER_R, MOUTH_CORNER_L]]
    fields = {
        "half_width": (points[16, 0] - points[0, 0]) / 2,
        "eye_y": -0.08 * height,
        "eye_dx": (right[0] - left[0]) / 2,
        "eye_w": eye_w,
        "eye_h": max(eye_h, 0.02 * height),
        "brow_gap": eye_y - brow_y,
        "brow_len": ((brow_r[-1, 0] - brow_r[0, 0]) + (brow_l[-1, 0] - brow_l[0, 0])) / 4,
        "nose_y": points[NOSE_TIP, 1] - centre[1],
        "nose_w": (points[35, 0] - points[31, 0]) / 2,
        "mouth_y": corners[:, 1].mean() - centre[1],
        "mouth_w": (corners[1, 0] - corners[0, 0]) / 2,
        "lip_thick": max((points[57, 1] - points[51, 1]) / 4, 0.012 * height),
    }
    fields = {k: float(v / height) for k, v in fields.items()}
    fields["hairline"] = -0.31
    return (float(centre[0]), float(centre[1])), float(height), fields


def check_training_sources(sources: dict[str, list[str]], what: str) -> None:
    """ValueError if any identity in `sources` (subject -> the portrait ids it is made of)
    uses a held-out portrait: a held-out face must never reach `what` (training,
    calibration, model choice)."""
    held = {p.id for p in portraits("heldout")}
    for subject, ids in sorted(sources.items()):
        bad = sorted(set(ids) & held)
        if bad:
            raise ValueError(
                f"{what} refused: identity {subject} is made from held-out portrait(s) "
                f"{', '.join(bad)}; held-out identities are for evaluation only"
            )


if __name__ == "__main__":  # rewrite landmarks.json from the shipped images
    verify()
    print(write_landmarks())
