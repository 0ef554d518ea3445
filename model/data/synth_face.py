"""SynthME's face: a parametric identity, its rendered texture, and FACS action-unit motion.

A subject is an `Identity` (face outline, skin tone, placement and size of eyes, brows,
nose and mouth, skin texture, hair, background, lighting direction), drawn from a seed.
`render_texture` paints its neutral face once, in float32 RGB at frame size; every frame
of that subject is this texture resampled through a backward map (see `synth.py`), so the
motion between any two frames is known exactly.

Action units are smooth displacement fields anchored on the identity's landmarks: sums of
anisotropic Gaussian bumps, each pushing content in one direction. `au_field` returns a
field normalised so that its largest displacement is 1 px; an expression scales it by its
intensity in pixels. The direction of each bump is the *visible* motion of the skin (FACS
descriptions, Ekman & Friesen 2002). Appearance changes that are not motion (wrinkles,
furrows, teeth showing) are not modelled: see docs/synthme.md.

Geometry is expressed in units of the face height `h` (chin to top of the forehead, in
pixels) so that the same identity can be rendered at any size.

Imports nothing of this project but its portraits (`mfvan.model.data.portraits`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mfvan.model.data.portraits import MorphRecipe

# Action units that SynthME models, with their FACS names.
ACTION_UNITS: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    6: "cheek raiser",
    9: "nose wrinkler",
    12: "lip corner puller",
    14: "dimpler",
    15: "lip corner depressor",
    17: "chin raiser",
    26: "jaw drop",
    45: "blink",
}


@dataclass(frozen=True)
class Identity:
    """One synthetic subject. Lengths are fractions of the face height; colours RGB in [0, 1]."""

    subject: int
    half_width: float  # face oval half width
    jaw: float  # lower-face width relative to the upper face (narrower chin < 1)
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hairline: float  # y of the hairline, negative = above the face centre
    background: tuple[float, float, float]
    eye_y: float
    eye_dx: float  # half the distance between the eye centres
    eye_w: float  # eye half width
    eye_h: float  # eye half height
    iris: tuple[float, float, float]
    brow_gap: float  # brow height above the eye centre
    brow_thick: float
    brow_len: float  # brow half length
    brow_dark: float  # 0 = skin coloured, 1 = hair coloured
    nose_y: float  # nose tip
    nose_w: float  # nose half width at the wings
    mouth_y: float
    mouth_w: float  # mouth half width
    lip_thick: float
    lip: tuple[float, float, float]
    light_azimuth: float  # radians, 0 = frontal, > 0 = light from the subject's left (image right)
    light_elevation: float
    ambient: float
    texture_amp: float
    texture_seed: int
    # realistic mode: photographic skin detail (pores, fine hair, fabric), 0 = none
    detail: float = 0.0
    # a photographic identity: the variant of the shipped photograph (see `PhotoVariant`)
    photo: PhotoVariant | None = None

    @classmethod
    def sample(cls, subject: int, seed: int) -> Identity:
        """Draw subject `subject`'s identity: the same (subject, seed) gives the same face."""
        rng = np.random.default_rng([seed, subject, 0x1D])
        tone = rng.uniform(0.0, 1.0)
        dark, light = np.array([0.36, 0.23, 0.16]), np.array([0.96, 0.80, 0.69])
        skin = dark + tone * (light - dark) + rng.normal(0, 0.02, 3)
        hair_tone = rng.uniform(0.03, 0.45)
        hair = np.array([hair_tone * 1.1, hair_tone * 0.85, hair_tone * 0.6])
        level, away = rng.uniform(0.12, 0.88), rng.uniform(0.18, 0.3)
        if abs(level - skin.mean()) < 0.15:  # keep the face outline visible
            level = skin.mean() - away if skin.mean() > 0.45 else skin.mean() + away
        background = level + rng.normal(0, 0.08, 3)
        lip = skin * np.array([0.78, 0.48, 0.48]) + rng.normal(0, 0.02, 3)
        iris = rng.choice(
            np.array([[0.25, 0.15, 0.08], [0.12, 0.08, 0.05], [0.25, 0.35, 0.5], [0.3, 0.35, 0.2]])
        )
        return cls(
            subject=subject,
            half_width=rng.uniform(0.36, 0.42),
            jaw=rng.uniform(0.78, 0.95),
            skin=tuple(np.clip(skin, 0, 1).tolist()),
            hair=tuple(np.clip(hair, 0, 1).tolist()),
            hairline=rng.uniform(-0.36, -0.30),
            background=tuple(np.clip(background, 0, 1).tolist()),
            eye_y=rng.uniform(-0.10, -0.06),
            eye_dx=rng.uniform(0.145, 0.175),
            eye_w=rng.uniform(0.055, 0.068),
            eye_h=rng.uniform(0.022, 0.030),
            iris=tuple(iris.tolist()),
            brow_gap=rng.uniform(0.075, 0.095),
            brow_thick=rng.uniform(0.026, 0.038),
            brow_len=rng.uniform(0.065, 0.085),
            brow_dark=rng.uniform(0.7, 0.85),
            nose_y=rng.uniform(0.08, 0.12),
            nose_w=rng.uniform(0.05, 0.07),
            mouth_y=rng.uniform(0.21, 0.25),
            mouth_w=rng.uniform(0.095, 0.125),
            lip_thick=rng.uniform(0.018, 0.028),
            lip=tuple(np.clip(lip, 0, 1).tolist()),
            light_azimuth=rng.uniform(-0.9, 0.9),
            light_elevation=rng.uniform(0.1, 0.6),
            ambient=rng.uniform(0.55, 0.75),
            texture_amp=rng.uniform(0.015, 0.05),
            texture_seed=int(rng.integers(2**31)),
        )

    def with_detail(self, detail: float) -> Identity:
        return replace(self, detail=detail)

    def landmarks(self) -> dict[str, tuple[float, float]]:
        """Named points (x, y) in face-height units, origin at the face centre, y down.

        Left/right are in the image: `_l` has negative x.
        """
        ey, ex = self.eye_y, self.eye_dx
        by = ey - self.brow_gap
        marks = {
            "nose_tip": (0.0, self.nose_y),
            "mouth_top": (0.0, self.mouth_y - self.lip_thick),
            "mouth_bottom": (0.0, self.mouth_y + self.lip_thick),
            "chin": (0.0, 0.44),
            "glabella": (0.0, by + 0.01),
        }
        for side, s in (("l", -1.0), ("r", 1.0)):
            marks[f"eye_{side}"] = (s * ex, ey)
            marks[f"brow_inner_{side}"] = (s * (ex - 0.7 * self.brow_len), by + 0.008)
            marks[f"brow_outer_{side}"] = (s * (ex + 0.8 * self.brow_len), by + 0.004)
            marks[f"cheek_{side}"] = (s * ex, ey + 0.085)
            marks[f"nose_wing_{side}"] = (s * self.nose_w, self.nose_y - 0.01)
            marks[f"mouth_corner_{side}"] = (s * self.mouth_w, self.mouth_y)
        return marks


# ----------------------------------------------------------------------------- photographs

# The photograph of photographic identities: matplotlib's public-domain portrait of Grace
# Hopper (US Navy, 1984), shipped in matplotlib's sample data (a dependency already), 512 x
# 600. Measured on it once, by eye on a 3x enlargement: the face centre and height in the
# same convention as `Identity.landmarks` (eyes at -0.08, chin at 0.44 face heights from
# the centre), and the landmark-defining fields. She wears glasses: the eyes are behind
# lenses, as many a real subject's are.
PHOTO_FILE = "grace_hopper.jpg"
PHOTO_CENTRE = (262.5, 208.0)  # px in the photograph
PHOTO_FACE_HEIGHT = 265.0  # px, chin to the top of the forehead
PHOTO_LANDMARKS = {
    "half_width": 0.40,
    "eye_y": -0.08,
    "eye_dx": 0.160,
    "eye_w": 0.057,
    "eye_h": 0.026,
    "brow_gap": 0.068,
    "brow_len": 0.083,
    "nose_y": 0.140,
    "nose_w": 0.094,
    "mouth_y": 0.253,
    "mouth_w": 0.132,
    "lip_thick": 0.022,
    "hairline": -0.31,
}
_X_FIELDS = ("half_width", "eye_dx", "eye_w", "brow_len", "nose_w", "mouth_w")


@dataclass(frozen=True)
class PhotoVariant:
    """One identity made from the photograph: mirrored or not, stretched (face width and
    height), re-toned (per-channel gain, gamma), with its own skin detail on top. With one
    photograph to hand these are what can differ between identities; held-out identities
    are the mirrored ones (odd seeds), so no held-out face is a tuning face re-toned."""

    mirror: bool
    scale_x: float
    scale_y: float
    gains: tuple[float, float, float]
    gamma: float
    # a morph of shipped portraits (`mfvan.model.data.portraits`) instead of the photograph
    morph: MorphRecipe | None = None


def photo_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / PHOTO_FILE


@lru_cache(maxsize=1)
def _photo() -> np.ndarray:
    """The photograph as float32 RGB in [0, 1]."""
    import cv2

    path = photo_path()
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"photographic identities need {path} (matplotlib's sample data)")
    return (bgr[..., ::-1] / np.float32(255)).astype(np.float32)


def photo_identity(subject: int, seed: int, detail: float = 1.0) -> Identity:
    """Subject `subject`'s photographic identity for `seed`: a `PhotoVariant` of the
    photograph, with the landmark fields measured on it, stretched as the variant is."""
    rng = np.random.default_rng([seed, subject, 0x9D])
    base = Identity.sample(subject, seed)  # the non-landmark fields (texture seed, ...)
    variant = PhotoVariant(
        mirror=seed % 2 == 1,
        scale_x=float(rng.uniform(0.9, 1.1)),
        scale_y=float(rng.uniform(0.94, 1.06)),
        gains=tuple(float(g) for g in rng.uniform(0.82, 1.12, 3)),
        gamma=float(rng.uniform(0.8, 1.25)),
    )
    fields = {
        k: v * (variant.scale_x if k in _X_FIELDS else variant.scale_y)
        for k, v in PHOTO_LANDMARKS.items()
    }
    return replace(base, **fields, detail=detail, photo=variant)


def morph_identity(subject: int, seed: int, split: str, detail: float = 1.0) -> Identity:
    """Subject `subject`'s identity for `seed`: a morph of two or three shipped portraits of
    `split` ("train" or "heldout"; `mfvan.model.data.portraits`), its landmark fields
    measured from the morph's landmarks (placed by a landmark model, never by hand)."""
    from mfvan.model.data.portraits import MorphRecipe, geometry, morph

    recipe = MorphRecipe.draw(split, subject, seed)
    _, _, fields = geometry(morph(recipe).points)
    base = Identity.sample(subject, seed)  # the non-landmark fields (texture seed, ...)
    variant = PhotoVariant(False, 1.0, 1.0, (1.0, 1.0, 1.0), 1.0, morph=recipe)
    return replace(base, **fields, detail=detail, photo=variant)


def _photo_source(v: PhotoVariant) -> tuple[np.ndarray, tuple[float, float], float]:
    """The variant's picture, its face centre and its face height (px)."""
    if v.morph is None:
        return _photo(), PHOTO_CENTRE, PHOTO_FACE_HEIGHT
    from mfvan.model.data.portraits import geometry, morph

    face = morph(v.morph)
    centre, height, _ = geometry(face.points)
    return face.image, centre, height


def _render_photo(ident: Identity, shape: tuple[int, int], place: Placement) -> np.ndarray:
    """The photograph (or morph) mapped so that its face lands on `place`, as the variant
    says."""
    import cv2

    v = ident.photo
    picture, (px, py), face_height = _photo_source(v)
    k = face_height / place.h  # photo px per frame px
    sx = -k / v.scale_x if v.mirror else k / v.scale_x
    sy = k / v.scale_y
    # frame (x, y) -> photo (sx (x - cx) + px, sy (y - cy) + py)
    matrix = np.array([[sx, 0, px - sx * place.cx], [0, sy, py - sy * place.cy]], np.float64)
    img = cv2.warpAffine(
        picture,
        matrix,
        (shape[1], shape[0]),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT,
    )
    img = np.clip(img, 0, 1) ** np.float32(v.gamma) * np.asarray(v.gains, np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- skin detail


def skin_detail(
    ident: Identity, shape: tuple[int, int], place: Placement, skin_alpha: np.ndarray
) -> np.ndarray:
    """Multiplicative photographic detail, (H, W) float32 around 1: pores (sparse dark
    dots a fraction of a pixel to a pixel across), fine skin grain, fine hairs (short dark
    strokes) at the hairline and the brows, and woven fabric below the chin. Amplitude
    `ident.detail` (1 = as a 256 px face on a decent camera shows them). This is what a
    codec smears differently in every frame; smooth parametric skin gives it nothing to
    smear."""
    import cv2

    if ident.detail <= 0:
        return np.ones(shape, np.float32)
    rng = np.random.default_rng([ident.texture_seed, 0xDE7])
    h, w = shape
    x, y = _grid(shape, place)
    scale = place.h / 256.0
    # pores: Poisson dots on the skin, each a small dark Gaussian
    dots = (rng.random(shape) < 0.02).astype(np.float32) * rng.uniform(0.5, 1.0, shape).astype(
        np.float32
    )
    pores = cv2.GaussianBlur(dots, (0, 0), 0.7 * scale)
    pores /= pores.max() + 1e-6
    grain = smooth_noise(shape, rng, 0.6 * scale)
    out = 1.0 - 0.10 * pores * skin_alpha + 0.025 * grain * skin_alpha
    # fine hairs: thin dark strokes, oriented along the hair's flow, near the hairline and
    # on the brows
    hairs = np.zeros(shape, np.float32)
    marks = ident.landmarks()
    centres = [(0.0, ident.hairline + 0.02, 0.30, 0.05, 1.4)]
    for side in ("l", "r"):
        bx, by = marks[f"brow_inner_{side}"]
        ox, oy = marks[f"brow_outer_{side}"]
        centres.append(((bx + ox) / 2, (by + oy) / 2, abs(ox - bx) / 2 + 0.02, 0.025, 0.15))
    for cx, cy, ax, ay, angle in centres:
        n = int(900 * ax * ay / 0.015 * scale)
        for _ in range(n):
            u, v = rng.uniform(-1, 1, 2)
            x0 = (cx + u * ax) * place.h + place.cx
            y0 = (cy + v * ay) * place.h + place.cy
            spread = rng.normal(0, 0.3)
            a = angle + spread if cx == 0.0 else np.sign(cx) * angle + spread
            length = rng.uniform(3, 8) * scale
            x1, y1 = x0 + length * np.cos(a), y0 - length * np.sin(a)
            cv2.line(
                hairs,
                (int(x0 * 16), int(y0 * 16)),
                (int(x1 * 16), int(y1 * 16)),
                float(rng.uniform(0.5, 1.0)),
                1,
                cv2.LINE_AA,
                4,
            )
    out *= 1.0 - 0.35 * np.clip(hairs, 0, 1)
    # fabric: a fine woven pattern (two crossing thread sets) below the chin and neck
    period = 3.2 * scale
    xs, ys = np.mgrid[0:h, 0:w].astype(np.float32)[::-1]
    weave = np.sin(2 * np.pi * (xs + ys) / period) * np.sin(2 * np.pi * (xs - ys) / period)
    cloth = np.clip((y - 0.62) / 0.03, 0, 1) * (1 - skin_alpha)
    out *= 1.0 + 0.08 * weave * cloth + 0.03 * smooth_noise(shape, rng, 0.8) * cloth
    return (out * ident.detail + (1 - ident.detail)).astype(np.float32)


@dataclass(frozen=True)
class Placement:
    """Where the face sits in the frame: centre (x, y) and face height, all in pixels."""

    cx: float
    cy: float
    h: float


def _grid(shape: tuple[int, int], place: Placement) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a frame, in face-height units relative to the face centre."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return (xs - place.cx) / place.h, (ys - place.cy) / place.h


def ellipse_alpha(x, y, cx, cy, ax, ay, soft):
    """Coverage of an ellipse with a soft edge `soft` wide (face-height units)."""
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    dist = (r - 1.0) * np.minimum(ax, ay)
    return np.clip(0.5 - dist / soft, 0.0, 1.0)


def smooth_noise(shape, rng, sigma_px):
    """Band-limited noise (zero mean, unit std) by Gaussian-blurring white noise."""
    import cv2

    white = rng.standard_normal(shape).astype(np.float32)
    out = cv2.GaussianBlur(white, (0, 0), sigma_px)
    return out / (out.std() + 1e-8)


def _blend(img, alpha, colour):
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, np.float32)


def render_texture(ident: Identity, shape: tuple[int, int], place: Placement) -> np.ndarray:
    """Paint the neutral face: float32 RGB in [0, 1], shape (H, W, 3).

    Layers, back to front: background, hair mass, face oval with Lambertian shading of an
    ellipsoid lit from the identity's light direction, skin texture, eye sockets, eyes,
    brows, nose shading, lips, hair fringe. Every edge is soft (about 1 px) so the texture
    resamples smoothly under sub-pixel motion. Then `skin_detail` when `ident.detail` > 0.

    A photographic identity (`ident.photo`) is the photograph instead, placed and re-toned
    as its variant says, with its own skin detail on top.
    """
    if ident.photo is not None:
        img = _render_photo(ident, shape, place)
        x, y = _grid(shape, place)
        face = ellipse_alpha(x, y, 0.0, 0.02, ident.half_width, 0.5, 0.05)
        return np.clip(img * skin_detail(ident, shape, place, face)[..., None], 0, 1)
    x, y = _grid(shape, place)
    soft = 1.2 / place.h
    rng = np.random.default_rng(ident.texture_seed)  # skin texture first, then the hair's
    img = np.empty((*shape, 3), np.float32)
    img[:] = np.asarray(ident.background, np.float32)
    img *= (1.0 + 0.15 * (y - x) * 0.5)[..., None]  # a gentle gradient, as in a real room

    # Hair behind the head, then the face oval (the lower half narrower: the jaw).
    _blend(img, ellipse_alpha(x, y, 0.0, -0.08, ident.half_width * 1.12, 0.56, soft), ident.hair)
    half_w = np.where(
        y > 0, ident.half_width * (1 - (1 - ident.jaw) * np.clip(y / 0.5, 0, 1)), ident.half_width
    )
    face = ellipse_alpha(x, y, 0.0, 0.0, half_w, 0.5, soft)
    neck = np.clip(0.5 - (np.abs(x) - ident.half_width * 0.55) / soft, 0, 1) * (y > 0.3)
    skin_alpha = np.maximum(face, neck * 0.92)
    shade = _lambert(ident, x, y)
    _blend_img(img, skin_alpha, _skin(ident, x, y, place, rng, shade))
    _paint_eyes(img, ident, x, y, soft, shade)
    _paint_brows(img, ident, x, y, soft)
    _paint_mouth(img, ident, x, y, soft, shade)
    _paint_fringe(img, ident, x, y, soft, rng)
    img *= skin_detail(ident, shape, place, skin_alpha)[..., None]
    return np.clip(img, 0.0, 1.0)


def _lambert(ident: Identity, x, y) -> np.ndarray:
    """Lambertian shading of the ellipsoid under the face, lit from the identity's light
    direction, over its ambient light."""
    nx = x / ident.half_width
    ny = y / 0.5
    nz = np.sqrt(np.clip(1.0 - nx**2 - ny**2, 0.05, 1.0))
    norm = np.sqrt(nx**2 + ny**2 + nz**2)
    az, el = ident.light_azimuth, ident.light_elevation
    light = np.array([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)])
    lambert = np.clip((nx * light[0] + ny * light[1] + nz * light[2]) / norm, 0, 1)
    return ident.ambient + (1 - ident.ambient) * lambert


def _skin(ident: Identity, x, y, place: Placement, rng, shade) -> np.ndarray:
    """The skin layer (float32): its colour and texture (two draws of `rng`), eye sockets,
    nose sides, lit bridge and cheek shadows, under `shade`."""
    shape = x.shape
    skin = np.asarray(ident.skin, np.float32)
    tex = ident.texture_amp * (
        0.6 * smooth_noise(shape, rng, 0.012 * place.h) + 0.4 * smooth_noise(shape, rng, 1.2)
    )
    skin_img = (skin[None, None, :] * (1.0 + tex)[..., None]).astype(np.float32)
    marks = ident.landmarks()

    # Eye sockets: a soft shadow above and around each eye.
    socket = np.zeros(shape, np.float32)
    for s in (-1, 1):
        ex, ey = marks["eye_r" if s > 0 else "eye_l"]
        socket = np.maximum(
            socket, ellipse_alpha(x, y, ex, ey - 0.01, ident.eye_w * 1.7, ident.eye_h * 2.6, 0.05)
        )
    # Nose: darker sides, lit bridge, dark nostrils.
    nose_side = np.zeros(shape, np.float32)
    for s in (-1, 1):
        d = np.abs(x - s * ident.nose_w * 0.55)
        along = np.clip((y - (ident.eye_y + 0.03)) / (ident.nose_y - ident.eye_y), 0, 1)
        nose_side = np.maximum(
            nose_side, np.exp(-(d**2) / (2 * 0.012**2)) * along * (y < ident.nose_y + 0.02)
        )
    bridge = np.exp(-(x**2) / (2 * 0.012**2)) * (y > ident.eye_y) * (y < ident.nose_y - 0.01)
    skin_img *= (1.0 - 0.35 * socket - 0.25 * nose_side + 0.08 * bridge)[..., None]
    # Cheek shading below the cheekbones, which also separates the mouth area.
    for s in (-1, 1):
        cheek = ellipse_alpha(
            x, y, s * (ident.half_width * 0.8), ident.nose_y + 0.04, 0.06, 0.12, 0.08
        )
        skin_img *= (1.0 - 0.08 * cheek)[..., None]
    skin_img *= shade[..., None]
    return skin_img


def _paint_eyes(img, ident: Identity, x, y, soft, shade) -> None:
    """Eyes: sclera, iris, pupil, upper lid line and crease."""
    marks = ident.landmarks()
    for s in (-1, 1):
        ex, ey = marks["eye_r" if s > 0 else "eye_l"]
        eye = _eye_alpha(x, y, ex, ey, ident.eye_w, ident.eye_h, soft)
        _blend(img, eye, np.array([0.88, 0.86, 0.82]) * shade.mean())
        iris = ellipse_alpha(x, y, ex, ey, ident.eye_h * 1.05, ident.eye_h * 1.05, soft) * eye
        _blend(img, iris, ident.iris)
        pupil = ellipse_alpha(x, y, ex, ey, ident.eye_h * 0.45, ident.eye_h * 0.45, soft) * eye
        _blend(img, pupil, (0.03, 0.03, 0.03))
        lid = _eye_alpha(x, y, ex, ey - 0.003, ident.eye_w * 1.08, ident.eye_h * 1.25, soft) * (
            1 - eye
        )
        lid *= y < ey
        _blend(img, 0.85 * lid, np.asarray(ident.hair) * 0.5)
        crease = _eye_alpha(x, y, ex, ey - 0.006, ident.eye_w * 1.1, ident.eye_h * 2.0, soft * 2)
        crease = crease * (
            1 - _eye_alpha(x, y, ex, ey - 0.006, ident.eye_w * 1.1, ident.eye_h * 1.6, soft * 2)
        )
        _blend(img, 0.35 * crease * (y < ey), np.asarray(ident.skin) * 0.45)


def _paint_brows(img, ident: Identity, x, y, soft) -> None:
    """Brows: thick arcs, thinning toward the outer end, always well darker than the skin
    (and at most as light as the hair)."""
    marks = ident.landmarks()
    brow_colour = np.minimum(
        np.asarray(ident.hair), np.asarray(ident.skin) * (1.0 - ident.brow_dark)
    )
    brow_colour = brow_colour * ident.ambient
    for s in (-1, 1):
        inner = np.array(marks["brow_inner_r" if s > 0 else "brow_inner_l"])
        outer = np.array(marks["brow_outer_r" if s > 0 else "brow_outer_l"])
        t = np.clip(((x - inner[0]) * (outer[0] - inner[0])) / ((outer[0] - inner[0]) ** 2), 0, 1)
        arc = inner[1] + (outer[1] - inner[1]) * t - 0.018 * np.sin(np.pi * t)
        thick = ident.brow_thick * (1.15 - 0.55 * t)
        inside = (x - inner[0]) * s >= -0.004
        beyond = (x - outer[0]) * s <= 0.004
        alpha = np.clip(0.5 - (np.abs(y - arc) - thick / 2) / soft, 0, 1) * inside * beyond
        _blend(img, 0.92 * alpha, brow_colour)


def _paint_mouth(img, ident: Identity, x, y, soft, shade) -> None:
    """Nostrils, then the lips: upper and lower, with a dark line between them."""
    for s in (-1, 1):
        nostril = ellipse_alpha(
            x, y, s * ident.nose_w * 0.45, ident.nose_y + 0.005, 0.016, 0.008, soft
        )
        _blend(img, 0.8 * nostril, np.asarray(ident.skin) * 0.25)
    mx, my, mw, lt = 0.0, ident.mouth_y, ident.mouth_w, ident.lip_thick
    upper = _eye_alpha(x, y, mx, my - lt * 0.55, mw, lt * 0.8, soft) * (y < my)
    lower = _eye_alpha(x, y, mx, my + lt * 0.6, mw * 0.9, lt * 1.0, soft) * (y >= my)
    lip_colour = np.asarray(ident.lip, np.float32)
    _blend(img, upper * shade, lip_colour * 0.85)
    _blend(img, lower * shade, lip_colour)
    line = np.clip(0.5 - (np.abs(y - my) - 0.003) / soft, 0, 1) * (np.abs(x) < mw * 0.97)
    _blend(img, 0.8 * line, lip_colour * 0.3)


def _paint_fringe(img, ident: Identity, x, y, soft, rng) -> None:
    """The hair fringe over the forehead, textured by one draw of `rng`."""
    fringe = np.clip(
        0.5 - (y - (ident.hairline - 0.02 * np.cos(x / ident.half_width * 3))) / soft, 0, 1
    )
    fringe *= ellipse_alpha(x, y, 0.0, -0.05, ident.half_width * 1.13, 0.58, soft)
    hair_tex = 1.0 + 0.06 * smooth_noise(x.shape, rng, 1.0)
    _blend_img(img, fringe, np.asarray(ident.hair, np.float32) * hair_tex[..., None])


def _blend_img(img, alpha, layer):
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * layer


def _eye_alpha(x, y, cx, cy, w, hgt, soft):
    """An almond: the intersection of two circles meeting at the corners (cx +- w, cy)."""
    r = (w**2 + hgt**2) / (2 * hgt)  # circle through both corners and the lid apex
    top = np.sqrt((x - cx) ** 2 + (y - (cy + r - hgt)) ** 2) - r
    bottom = np.sqrt((x - cx) ** 2 + (y - (cy - r + hgt)) ** 2) - r
    return np.clip(0.5 - np.maximum(top, bottom) / soft, 0.0, 1.0)


# Action units as bumps: (landmark, sigma_x, sigma_y, direction), sizes in face heights,
# direction the visible motion of the skin. `_l` landmarks are mirrored to `_r` with the
# x-direction flipped, so every AU is bilateral and symmetric.
_AU_BUMPS: dict[int, list[tuple[str, float, float, tuple[float, float]]]] = {
    1: [("brow_inner_l", 0.040, 0.050, (0.0, -1.0))],
    2: [("brow_outer_l", 0.040, 0.045, (0.0, -1.0))],
    4: [("brow_inner_l", 0.045, 0.040, (0.55, 0.83))],
    6: [("cheek_l", 0.055, 0.035, (0.0, -1.0))],
    9: [("nose_wing_l", 0.030, 0.040, (0.25, -0.97))],
    12: [("mouth_corner_l", 0.035, 0.030, (-0.6, -0.8))],
    14: [("mouth_corner_l", 0.028, 0.025, (0.95, -0.3))],
    15: [("mouth_corner_l", 0.032, 0.030, (-0.25, 0.97))],
    17: [("chin", 0.070, 0.045, (0.0, -1.0))],
    26: [("chin", 0.140, 0.090, (0.0, 1.0))],
}
_AU_OFFSETS: dict[int, tuple[float, float]] = {
    6: (0.0, -0.01),
    17: (0.0, -0.12),  # just under the lower lip, which it pushes up
    26: (0.0, -0.06),
}


def au_bumps(ident: Identity, au: int) -> list[tuple[float, float, float, float, float, float]]:
    """The bumps of `au` for this identity: (x, y, sigma_x, sigma_y, dx, dy), face-height units."""
    marks = ident.landmarks()
    off_x, off_y = _AU_OFFSETS.get(au, (0.0, 0.0))
    out = []
    for name, sx, sy, (dx, dy) in _AU_BUMPS[au]:
        x0, y0 = marks[name]
        out.append((x0 + off_x, y0 + off_y, sx, sy, dx, dy))
        if name.endswith("_l"):
            out.append((-(x0 + off_x), y0 + off_y, sx, sy, -dx, dy))
    return out


def au_field(ident: Identity, au: int, shape: tuple[int, int], place: Placement) -> np.ndarray:
    """Displacement field of `au` in pixels, (H, W, 2) float32 (dx, dy), max magnitude 1.

    Smooth everywhere; below 1e-3 of its peak beyond four sigmas of every bump.
    AU45 (blink) is not a bump: see `blink_field`.
    """
    if au == 45:
        return blink_field(ident, shape, place)
    x, y = _grid(shape, place)
    field = np.zeros((*shape, 2), np.float32)
    for x0, y0, sx, sy, dx, dy in au_bumps(ident, au):
        g = np.exp(-(((x - x0) / sx) ** 2 + ((y - y0) / sy) ** 2) / 2)
        field[..., 0] += dx * g
        field[..., 1] += dy * g
    peak = np.sqrt((field**2).sum(-1)).max()
    return field / peak


def blink_field(ident: Identity, shape: tuple[int, int], place: Placement) -> np.ndarray:
    """Eyelid closure as motion: at intensity 1 the upper lid has come down over the eye.

    In pixels per unit intensity, pointing down inside each eye and fading out within one
    eye-height around it. At full closure the skin above each eye covers it, as a lid does.
    """
    x, y = _grid(shape, place)
    field = np.zeros((*shape, 2), np.float32)
    marks = ident.landmarks()
    travel = 2.6 * ident.eye_h  # lid travel, face-height units: far enough to cover the eye
    for side in ("l", "r"):
        ex, ey = marks[f"eye_{side}"]
        across = np.exp(-(((x - ex) / (ident.eye_w * 1.1)) ** 4))
        top, bottom = ey - 2.4 * ident.eye_h, ey + 1.2 * ident.eye_h
        # Rises from the brow region to full travel at the lower lid, then stops sharply.
        along = np.clip((y - top) / (bottom - top), 0, 1) ** 1.5 * np.exp(
            -(np.clip(y - bottom, 0, None) ** 2) / (2 * (0.4 * ident.eye_h) ** 2)
        )
        field[..., 1] += (travel * place.h) * across * along
    return field
