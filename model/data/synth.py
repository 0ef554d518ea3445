"""SynthME: synthetic micro-expression videos whose onset, apex, offset, class and motion
are known exactly.

No public micro-expression dataset can be fetched where mfvan is built and tested, so
every test, the demo and the benchmark use this generator. One frame-producing core,
`SubjectRenderer.render(FrameState)`, makes every frame; four outputs are built on it:

1. short clips for recognition, in CASME II's layout (`write_clips`), read back by
   `mfvan.model.data.casme2` unchanged;
2. long videos for spotting, several micro-expressions among nuisances, encoded with PyAV
   (lossless FFV1 in Matroska by default, H.264 as an option), ground truth in CSV
   (`write_long_videos`);
3. the exact forward optical flow from onset to apex of every clip, `.npy`;
4. a live, endless frame iterator (`SynthStream`), which the `synth://` source of the
   pipeline wraps; a long video is the first frames of the stream of the same seed.

How a frame is made: a subject's neutral face is painted once (`synth_face.render_texture`).
Frame t is that texture sampled through a backward map p_t: frame_t(x) = T(p_t(x)), with
p_t(x) = y - D_t(y), y = S_t^-1(x), where S_t is the head pose (slow drift and rotation)
and D_t the sum of the active action units' displacement fields (synth_face.au_field)
scaled by their intensity at t, plus the blink field. Then global illumination (flicker,
slow light change) and sensor noise, in image space. Because every frame is the same
texture through a known map, the motion between two frames is known: `forward_flow`
solves p_apex(x + f(x)) = p_onset(x) by fixed-point iteration, which is the flow in the
convention of Middlebury and of OpenCV's `calcOpticalFlowFarneback(onset, apex)`:
onset(x) ~ apex(x + f(x)).

Choices where the method is silent, each a parameter:
- Classes follow from action units (`AU_COMBOS`), CASME II's five emotions; the three
  MEGC 2019 composite classes follow by the composite's relabelling (`EMOTION_TO_3`:
  others is dropped, as there).
- A micro-expression's peak displacement is drawn from `micro_px` (1 to 2 px on a 256 px
  face, scaled with the face); its onset-to-apex time from 40 to 250 ms; onset to offset
  under 500 ms. Macro-expressions: 4 to 10 px, 0.6 to 3 s. Intensity rises and falls
  along half cosines, exactly 0 at onset and offset and 1 at the apex frame.
- Determinism: every random draw comes from a NumPy Generator seeded by
  (seed, purpose, indices), never from global state, so outputs do not depend on the
  number of worker processes or on the order in which work finishes.

Imports nothing of mfvan.stream or mfvan.deploy.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from mfvan.model.data import casme2
from mfvan.model.data.synth_face import (
    Identity,
    Placement,
    au_field,
    ellipse_alpha,
    morph_identity,
    photo_identity,
    render_texture,
    smooth_noise,
)

EMOTIONS_5 = casme2.EMOTIONS
CLASSES_3 = ("negative", "positive", "surprise")
EMOTION_TO_3: dict[str, str | None] = {
    "happiness": "positive",
    "disgust": "negative",
    "repression": "negative",
    "surprise": "surprise",
    "others": None,
}
# The action-unit combinations that express each emotion, after CASME II's coding
# (Yan et al. 2014, Table 2); docs/datasets.md lists them.
AU_COMBOS: dict[str, tuple[tuple[int, ...], ...]] = {
    "happiness": ((12,), (6, 12)),
    "disgust": ((9,), (4, 9)),
    "repression": ((14,), (15,), (15, 17), (14, 17), (4, 15)),
    "surprise": ((1, 2), (1, 2, 26)),
    "others": ((4,), (1, 4)),
}
BLINK = 45


@dataclass(frozen=True)
class Nuisances:
    """What a spotter must not fire on and a recognizer must ignore. 0 switches one off.

    Displacements are in px on a 256 px face (scaled with the face), like expressions.
    """

    blink_rate_hz: float = 0.3  # spontaneous blinks, about one every 3 s
    blink_ms: tuple[float, float] = (100.0, 150.0)
    drift_px: float = 3.0  # amplitude of slow head translation
    drift_deg: float = 1.0  # amplitude of slow head rotation (in-plane)
    noise_std: float = 1.0  # sensor noise, grey levels of 255
    flicker: float = 0.01  # relative amplitude of illumination flicker
    flicker_hz: tuple[float, float] = (2.0, 12.0)  # aliased lamp flicker
    light_change: float = 0.06  # relative amplitude of slow illumination change
    macro_per_segment: int = 1  # macro-expressions per 10 s of long video
    # gestures (long videos only; the realistic presets turn them on): a head turned aside
    # and back (yaw, each way `turn_ms`, held `turn_hold_ms`), a hand raised over the mouth
    # and lowered (each way `hand_ms`, held `hand_hold_ms`); rates per second of video
    turn_rate_hz: float = 0.0
    turn_deg: tuple[float, float] = (10.0, 30.0)
    turn_ms: tuple[float, float] = (250.0, 500.0)
    turn_hold_ms: tuple[float, float] = (200.0, 800.0)
    hand_rate_hz: float = 0.0
    hand_ms: tuple[float, float] = (200.0, 400.0)
    hand_hold_ms: tuple[float, float] = (300.0, 1000.0)

    def scaled(self, k: float) -> Nuisances:
        """Every nuisance's strength times `k` (rates and amplitudes; durations kept)."""
        return replace(
            self,
            blink_rate_hz=self.blink_rate_hz * k,
            drift_px=self.drift_px * k,
            drift_deg=self.drift_deg * k,
            noise_std=self.noise_std * k,
            flicker=self.flicker * k,
            light_change=self.light_change * k,
            macro_per_segment=round(self.macro_per_segment * k),
            turn_rate_hz=self.turn_rate_hz * k,
            hand_rate_hz=self.hand_rate_hz * k,
        )

    @classmethod
    def none(cls) -> Nuisances:
        return cls().scaled(0.0)


IDENTITY_KINDS = ("parametric", "photo", "morph-train", "morph-heldout")


@dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes a SynthME set. `CONFIGS` holds the named presets."""

    name: str = "standard"
    subjects: int = 16
    clips_per_subject: int = 19
    fps: float = 200.0
    frame_size: tuple[int, int] = (384, 320)  # (H, W)
    face_height: float = 256.0  # px, chin to top of the forehead
    micro_px: tuple[float, float] = (1.0, 2.0)  # peak displacement on a 256 px face
    macro_px: tuple[float, float] = (4.0, 10.0)
    micro_rise_ms: tuple[float, float] = (40.0, 250.0)  # onset to apex
    micro_max_ms: float = 490.0  # onset to offset stays under this
    macro_rise_ms: tuple[float, float] = (150.0, 700.0)
    macro_ms: tuple[float, float] = (600.0, 3000.0)
    clip_margin_ms: tuple[float, float] = (25.0, 100.0)  # neutral frames around a clip
    emotion_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)  # over EMOTIONS_5
    long_videos: int = 4
    long_seconds: float = 20.0
    micro_per_segment: int = 3  # micro-expressions per 10 s of long video
    nuisances: Nuisances = field(default_factory=Nuisances)
    clip_nuisances: Nuisances = field(
        default_factory=lambda: replace(Nuisances(), blink_rate_hz=1.0, macro_per_segment=0)
    )
    codec: str = "ffv1"  # long videos: a key of ENCODINGS
    gop_s: float = 1.0  # camera encodings: one key frame every gop_s seconds
    jpeg_quality: int = 95
    # realistic mode (the `camera` and `photo` presets)
    # "parametric" faces; "photo": the photograph's; "morph-train" / "morph-heldout":
    # morphs of the shipped portraits of that split (model/data/portraits.py)
    identities: str = "parametric"
    skin_detail: float = 0.0  # photographic skin detail (synth_face.skin_detail), 0 = off
    noise_model: str = "white"  # "white", or "camera": spatially correlated, signal-dependent

    def __post_init__(self):
        if self.fps < 25:
            raise ValueError(f"fps must be at least 25, got {self.fps}")
        if self.codec not in ENCODINGS:
            raise ValueError(f"codec must be one of {', '.join(ENCODINGS)}, got {self.codec!r}")
        if self.identities not in IDENTITY_KINDS:
            raise ValueError(
                f"identities must be one of {', '.join(IDENTITY_KINDS)}, not {self.identities!r}"
            )
        if self.noise_model not in ("white", "camera"):
            raise ValueError(f"noise_model must be 'white' or 'camera', not {self.noise_model!r}")
        if self.subjects < 1:
            raise ValueError(f"subjects must be at least 1, got {self.subjects}")

    @property
    def portrait_split(self) -> str | None:
        """The portraits' split a morph config draws its faces from ("train", "heldout")."""
        return (
            self.identities.removeprefix("morph-") if self.identities.startswith("morph-") else None
        )

    @property
    def px_scale(self) -> float:
        """Pixels on this face per pixel on a 256 px face."""
        return self.face_height / 256.0

    def placement(self) -> Placement:
        h, w = self.frame_size
        return Placement(cx=w / 2, cy=h / 2 + 0.04 * self.face_height, h=self.face_height)

    def frames(self, ms: float) -> int:
        """A duration in whole frames at this config's rate (at least 1)."""
        return max(1, round(ms * self.fps / 1000.0))


@dataclass(frozen=True)
class Encoding:
    """How long videos are encoded. Camera encodings are what IP cameras send: a key frame
    every `gop_s` (SynthConfig), no B-frames, no scene-cut key frames; quality by CRF, or a
    constant bitrate of `bits_per_pixel` per frame (IP cameras: 4 Mbit/s at 1080p30 is
    0.064, 2 Mbit/s at 720p30 0.072)."""

    codec: str  # FFmpeg encoder
    ext: str
    crf: int | None = None
    bits_per_pixel: float | None = None
    camera: bool = True
    label: str = ""


ENCODINGS: dict[str, Encoding] = {
    "ffv1": Encoding("ffv1", "mkv", camera=False, label="FFV1 (lossless)"),
    # the first H.264 option: near lossless, encoder defaults (B-frames, scene cuts)
    "h264": Encoding("libx264", "mp4", crf=12, camera=False, label="H.264 CRF 12"),
    "h264-crf18": Encoding("libx264", "mp4", crf=18, label="H.264 CRF 18"),
    "h264-crf23": Encoding("libx264", "mp4", crf=23, label="H.264 CRF 23"),
    "h264-crf28": Encoding("libx264", "mp4", crf=28, label="H.264 CRF 28"),
    "h265-crf23": Encoding("libx265", "mp4", crf=23, label="H.265 CRF 23"),
    "h264-cbr": Encoding("libx264", "mp4", bits_per_pixel=0.07, label="H.264 camera CBR"),
}


CONFIGS: dict[str, SynthConfig] = {
    # The benchmark's set: 16 subjects, 304 clips, 4 long videos of 20 s.
    "standard": SynthConfig(),
    # For tests: seconds to generate.
    "tiny": SynthConfig(
        name="tiny",
        subjects=3,
        clips_per_subject=5,
        frame_size=(192, 160),
        face_height=128.0,
        long_videos=1,
        long_seconds=4.0,
    ),
}
# Realistic mode, the default of spotting evaluation: photographic skin detail, camera
# noise, H.264 CRF 23 with a 1 s GOP; 4 micro-expressions per 10 s so that a sweep gathers
# enough of them in an hour on two cores.
CONFIGS["camera"] = replace(
    CONFIGS["standard"],
    name="camera",
    skin_detail=1.0,
    noise_model="camera",
    # a head turn and a hand over the mouth about every 20 s each (issue 39: the spotter
    # must neither fire on them nor lose the face)
    nuisances=replace(Nuisances(), noise_std=2.0, turn_rate_hz=0.05, hand_rate_hz=0.05),
    codec="h264-crf23",
    micro_per_segment=4,
)
CONFIGS["photo"] = replace(CONFIGS["camera"], name="photo", identities="photo", skin_detail=0.5)
# Real faces that are nobody: morphs of the shipped portraits (model/data/portraits.py), the
# training split's, and the held-out split's, which nothing is trained, tuned, calibrated or
# chosen on. A portrait is ~100 px high, so its own skin is soft at 256 px: skin detail on.
CONFIGS["morph"] = replace(CONFIGS["photo"], name="morph", identities="morph-train")
CONFIGS["morph-heldout"] = replace(
    CONFIGS["photo"], name="morph-heldout", identities="morph-heldout"
)


@dataclass(frozen=True)
class Expression:
    """One facial expression in a video: frames are indices in that video."""

    kind: str  # "micro" | "macro"
    emotion: str  # one of EMOTIONS_5
    aus: tuple[int, ...]
    au_px: tuple[float, ...]  # each AU's displacement scale, px in this video
    peak_px: float  # largest displacement of the expression at its apex, px in this video
    onset: int
    apex: int
    offset: int

    @property
    def label3(self) -> str | None:
        return EMOTION_TO_3[self.emotion]

    def intensity(self, t: float) -> float:
        """0 at and outside onset/offset, 1 at the apex; half-cosine rise and fall."""
        if t <= self.onset or t >= self.offset:
            return 0.0
        if t <= self.apex:
            u = (t - self.onset) / (self.apex - self.onset)
        else:
            u = (self.offset - t) / (self.offset - self.apex)
        return 0.5 - 0.5 * math.cos(math.pi * u)

    def au_string(self) -> str:
        return "+".join(str(a) for a in self.aus)


@dataclass(frozen=True)
class Blink:
    start: int
    end: int

    def intensity(self, t: float) -> float:
        """Closes in the first third, reopens over the rest, as real blinks do."""
        if t <= self.start or t >= self.end:
            return 0.0
        closing = (self.end - self.start) / 3.0
        u = (
            (t - self.start) / closing
            if t - self.start < closing
            else (self.end - t) / (self.end - self.start - closing)
        )
        return 0.5 - 0.5 * math.cos(math.pi * min(u, 1.0))


@dataclass(frozen=True)
class Gesture:
    """A head turn ("turn": `amount` degrees of yaw, + to the image's right) or a hand over
    the mouth ("hand": `amount` 1): from `start` it moves there over `rise` frames, holds,
    and moves back over the last `rise` frames before `end`."""

    kind: str
    start: int
    end: int
    rise: int
    amount: float

    def intensity(self, t: float) -> float:
        """0 outside, 1 while held; half-cosine ways there and back."""
        if t <= self.start or t >= self.end:
            return 0.0
        u = min(t - self.start, self.end - t, self.rise) / self.rise
        return 0.5 - 0.5 * math.cos(math.pi * u)


@dataclass(frozen=True)
class FrameState:
    """Everything that makes one frame: AU displacements in px, pose, light, noise seed;
    `hand`: how far a hand is raised over the mouth (0: not in view, 1: over it), moved by
    `hand_sway` px while held."""

    au_px: dict[int, float]
    tx: float = 0.0
    ty: float = 0.0
    angle_deg: float = 0.0
    yaw_deg: float = 0.0
    hand: float = 0.0
    hand_sway: tuple[float, float] = (0.0, 0.0)
    gain: float = 1.0
    noise_std: float = 0.0
    noise_seed: tuple[int, ...] = (0,)


def make_identity(config: SynthConfig, subject: int, seed: int) -> Identity:
    """Subject `subject`'s face for `seed` under the config's kind of identities."""
    if config.identities == "photo":
        return photo_identity(subject, seed, config.skin_detail)
    if config.portrait_split is not None:
        return morph_identity(subject, seed, config.portrait_split, config.skin_detail)
    return Identity.sample(subject, seed).with_detail(config.skin_detail)


def identity_sources(config: SynthConfig, subject: int, seed: int) -> list[str]:
    """The real photographs subject `subject`'s face for `seed` is made of: portrait ids,
    "hopper", or none (parametric), known from its recipe without rendering the face."""
    if config.identities == "photo":
        return ["hopper"]
    if config.portrait_split is not None:
        from mfvan.model.data.portraits import MorphRecipe

        return list(MorphRecipe.draw(config.portrait_split, subject, seed).sources)
    return []


class SubjectRenderer:
    """One subject's face at one frame size: renders any `FrameState`, and the exact flow
    between two states. Holds the texture and each action unit's field (built once)."""

    def __init__(self, subject: int, seed: int, config: SynthConfig):
        self.config = config
        self.identity = make_identity(config, subject, seed)
        self.placement = config.placement()
        shape = config.frame_size
        self.texture = render_texture(self.identity, shape, self.placement)
        aus = sorted({a for combos in AU_COMBOS.values() for c in combos for a in c} | {BLINK})
        self.fields = {au: au_field(self.identity, au, shape, self.placement) for au in aus}
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        self.grid = np.dstack([xs, ys])

    def displacement(self, au_px: dict[int, float]) -> np.ndarray:
        """Sum of the AU fields, (H, W, 2) px, in face coordinates (before head pose)."""
        out = np.zeros_like(self.grid)
        for au, px in au_px.items():
            if px:
                out += np.float32(px) * self.fields[au]
        return out

    def backward_map(self, state: FrameState, at: np.ndarray | None = None) -> np.ndarray:
        """p(x): where in the neutral texture pixel x samples, (H, W, 2) float32.

        `at` evaluates p at other points than the pixel grid (any (..., 2) array of x, y);
        the pose part is exact there and the AU part interpolated from its smooth field.
        """
        import cv2

        on_grid = at is None
        at = self.grid if at is None else at
        posed = not state.tx == state.ty == state.angle_deg == state.yaw_deg == 0.0
        if posed:
            # y = S^-1 x: undo the head's translation and rotation about the face centre.
            cx, cy = self.placement.cx, self.placement.cy
            a = math.radians(state.angle_deg)
            cos, sin = np.float32(math.cos(a)), np.float32(math.sin(a))
            gx = at[..., 0] - np.float32(cx + state.tx)
            gy = at[..., 1] - np.float32(cy + state.ty)
            y = np.empty_like(at)
            y[..., 0] = cos * gx + sin * gy + np.float32(cx)
            y[..., 1] = cos * gy - sin * gx + np.float32(cy)
            if state.yaw_deg:
                self._unturn(y, state.yaw_deg)
        else:
            y = at.copy()
        if state.au_px:
            disp = self.displacement(state.au_px)
            if posed or not on_grid:
                disp = cv2.remap(
                    disp, y[..., 0], y[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
                )
            y -= disp
        return y

    def _unturn(self, y: np.ndarray, yaw_deg: float) -> None:
        """Undo a head turn of `yaw_deg`, in place on the texture coordinates `y`.

        Our model (the paper and the datasets say nothing of it): the head is a vertical
        cylinder of radius half the face height through the face's centre, seen from the
        front; the texture is that cylinder seen unturned, so a frame point at
        u = (x - cx) / R shows the texture's point at cx + R sin(asin(u) - yaw). The hidden
        side is clamped to the cylinder's edge; what lies beyond it (the wall, the hair's
        outline) does not move. The light stays on the texture (the shading turns with
        the face) and only the cylinder has depth (the nose does not stand out): a turn
        here is a smooth sideways squeeze of the face, as large as a real one.
        """
        cx, r = np.float32(self.placement.cx), np.float32(0.5 * self.placement.h)
        u = (y[..., 0] - cx) / r
        phi = np.arcsin(np.clip(u, -1.0, 1.0)) - np.float32(math.radians(yaw_deg))
        turned = cx + r * np.sin(np.clip(phi, -np.pi / 2, np.pi / 2))
        y[..., 0] = np.where(np.abs(u) < 1.0, turned, y[..., 0])

    def _hand_sprite(self) -> np.ndarray:
        """A hand seen from the back, fingers up, in the face's own skin colour (the mean of
        its cheeks in the texture) with soft shading: (H, W, 4) float32, colour
        premultiplied by coverage in the last channel; its centre goes over the mouth."""
        if not hasattr(self, "_hand"):
            h = self.placement.h
            side = int(round(0.7 * h)) | 1
            ys, xs = (np.mgrid[0:side, 0:side].astype(np.float32) - side // 2) / np.float32(h)
            soft = 1.2 / h
            cover = ellipse_alpha(xs, ys, 0.0, 0.08, 0.19, 0.15, soft)  # the palm
            for fx in (-0.12, -0.04, 0.04, 0.12):  # four fingers, the middle two longer
                reach = 0.13 if abs(fx) < 0.1 else 0.11
                cover = np.maximum(cover, ellipse_alpha(xs, ys, fx, -0.1, 0.04, reach, soft))
            cover = np.maximum(cover, ellipse_alpha(xs, ys, 0.2, 0.02, 0.09, 0.04, soft))
            cx, cy = int(self.placement.cx), int(self.placement.cy + 0.05 * h)
            dx, d = int(0.2 * h), max(2, int(0.03 * h))
            cheeks = [self.texture[cy - d : cy + d, x - d : x + d] for x in (cx - dx, cx + dx)]
            skin = np.concatenate([c.reshape(-1, 3) for c in cheeks]).mean(axis=0)
            rng = np.random.default_rng([self.identity.texture_seed, 0x4A])
            grain = smooth_noise((side, side), rng, 2.0) * np.float32(0.03)
            shade = (0.95 - 0.25 * ys + grain)[..., None]  # lit from above, darker below
            self._hand = np.dstack([skin * shade * cover[..., None], cover]).astype(np.float32)
        return self._hand

    def _raise_hand(self, img: np.ndarray, state: FrameState) -> None:
        """Put the hand `state.hand` of the way from below the frame to over the mouth, in
        place on the texture-lit frame `img` (before the light's gain)."""
        import cv2

        sprite = self._hand_sprite()
        side = sprite.shape[0]
        place, (fh, fw) = self.placement, self.config.frame_size
        rest_y = place.cy + self.identity.mouth_y * place.h + state.hand_sway[1]
        below = fh + side / 2
        centre_y = below + (rest_y - below) * state.hand
        shift = np.float32(
            [[1, 0, place.cx + state.hand_sway[0] - side // 2], [0, 1, centre_y - side // 2]]
        )
        layer = cv2.warpAffine(sprite, shift, (fw, fh), flags=cv2.INTER_LINEAR, borderValue=0)
        img *= 1.0 - layer[..., 3:]
        img += layer[..., :3]

    def render(self, state: FrameState, noise: bool = True) -> np.ndarray:
        """The frame for `state`: uint8 RGB, (H, W, 3)."""
        img = self.render_exact(state)
        if noise and state.noise_std > 0:
            unit = self._noise(state.noise_seed)
            if self.config.noise_model == "camera":
                # shot noise grows with the signal: std = noise_std at mid grey
                std = np.sqrt(np.float32(0.3) + np.float32(1.4 / 255) * img)
                img += unit * std * np.float32(state.noise_std)
            else:
                img += unit * np.float32(state.noise_std)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    def render_exact(self, state: FrameState) -> np.ndarray:
        """The frame before sensor noise and 8-bit quantisation: float32 RGB in [0, 255]."""
        import cv2

        pmap = self.backward_map(state)
        img = cv2.remap(
            self.texture,
            pmap[..., 0],
            pmap[..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        if state.hand > 0:
            self._raise_hand(img, state)
        img *= np.float32(state.gain * 255.0)
        return img

    _NOISE_BANK, _NOISE_PAD = 4, 64

    def _noise(self, seed: tuple[int, ...]) -> np.ndarray:
        """Unit Gaussian sensor noise for one frame, (H, W, 3) float32.

        Drawing 3HW normals per frame costs more than rendering it, so frames take random
        windows of a small bank of larger noise images: a window is chosen by the frame's
        own seed, so consecutive frames' noise is unrelated and every frame's is reproducible.

        The `camera` noise model correlates it as a sensor's pipeline does: demosaicing and
        denoising blur it over about a pixel (Gaussian, sigma 0.8 px), and the colour
        channels share half of it (what is left after demosaicing is mostly luma noise).
        """
        if not hasattr(self, "_bank"):
            import cv2

            h, w = self.config.frame_size
            rng = np.random.default_rng([self.identity.texture_seed, 0xB4])
            pad = self._NOISE_PAD
            self._bank = rng.standard_normal(
                (self._NOISE_BANK, h + pad, w + pad, 3), dtype=np.float32
            )
            if self.config.noise_model == "camera":
                for k in range(self._NOISE_BANK):
                    shared = self._bank[k].mean(axis=2, keepdims=True) * np.float32(np.sqrt(3))
                    mixed = 0.7 * shared + 0.71 * self._bank[k]
                    blurred = cv2.GaussianBlur(mixed, (0, 0), 0.8)
                    self._bank[k] = blurred / blurred.std()
        h, w = self.config.frame_size
        k, dy, dx = np.random.default_rng(seed).integers(
            (0, 0, 0), (self._NOISE_BANK, self._NOISE_PAD, self._NOISE_PAD)
        )
        return self._bank[k, dy : dy + h, dx : dx + w]

    def forward_flow(self, a: FrameState, b: FrameState, iterations: int = 20) -> np.ndarray:
        """Exact optical flow from frame `a` to frame `b`: a(x) = b(x + f(x)), (H, W, 2) float32.

        Solves p_b(x + f) = p_a(x) by fixed-point iteration; converges because both maps
        are close to the identity (their Jacobians differ from it by the AU fields' small
        gradients and the head's small rotation).
        """

        pa = self.backward_map(a)
        flow = pa - self.backward_map(b)
        for _ in range(iterations):
            flow += pa - self.backward_map(b, at=self.grid + flow)
        return flow

    def peak_of(self, au_weights: dict[int, float]) -> float:
        """Largest displacement (px) of the combined field for these AU weights."""
        disp = self.displacement(au_weights)
        return float(np.sqrt((disp**2).sum(-1)).max())


class Timeline:
    """What happens in one video of one subject: expressions, blinks, head pose, light.

    `state(t)` gives the `FrameState` of frame t. Deterministic from `rng_seed`.
    """

    def __init__(self, config: SynthConfig, nuisances: Nuisances, rng_seed: tuple[int, ...]):
        self.config = config
        self.nuisances = nuisances
        self.rng_seed = rng_seed
        rng = np.random.default_rng([*rng_seed, 0x7E])
        self.expressions: list[Expression] = []
        self.blinks: list[Blink] = []
        self.gestures: list[Gesture] = []
        # Smooth head motion and light: sums of slow sinusoids with random phases.
        self._drift = rng.uniform(0.03, 0.4, (3, 3)), rng.uniform(0, 2 * math.pi, (3, 3))
        self._flicker = rng.uniform(*nuisances.flicker_hz), rng.uniform(0, 2 * math.pi)
        self._light = rng.uniform(1 / 60, 1 / 20), rng.uniform(0, 2 * math.pi)

    def state(self, t: int) -> FrameState:
        cfg, nz = self.config, self.nuisances
        au_px: dict[int, float] = {}
        for e in self.expressions:
            k = e.intensity(t)
            if k:
                for au, px in zip(e.aus, e.au_px, strict=True):
                    au_px[au] = au_px.get(au, 0.0) + k * px
        blink = max((b.intensity(t) for b in self.blinks), default=0.0)
        if blink:
            au_px[BLINK] = blink
        secs = t / cfg.fps
        (freqs, phases) = self._drift
        wave = np.sin(2 * math.pi * freqs * secs + phases).sum(axis=1) / 3.0
        f_hz, f_phase = self._flicker
        l_hz, l_phase = self._light
        gain = 1.0 + nz.flicker * math.sin(2 * math.pi * f_hz * secs + f_phase)
        gain += nz.light_change * math.sin(2 * math.pi * l_hz * secs + l_phase)
        yaw = sum(g.intensity(t) * g.amount for g in self.gestures if g.kind == "turn")
        hand = max((g.intensity(t) for g in self.gestures if g.kind == "hand"), default=0.0)
        # a raised hand is never quite still: it sways by about 1% of the face's height
        sway = (0.0, 0.0)
        if hand:
            sway = (
                cfg.face_height * hand * 0.012 * math.sin(2 * math.pi * 0.45 * secs),
                cfg.face_height * hand * 0.008 * math.sin(2 * math.pi * 0.65 * secs + 1.0),
            )
        return FrameState(
            au_px=au_px,
            tx=float(wave[0]) * nz.drift_px * cfg.px_scale,
            ty=float(wave[1]) * nz.drift_px * cfg.px_scale,
            angle_deg=float(wave[2]) * nz.drift_deg,
            yaw_deg=float(yaw),
            hand=hand,
            hand_sway=sway,
            gain=gain,
            noise_std=nz.noise_std,
            noise_seed=(*self.rng_seed, t),
        )


def draw_expression(
    rng: np.random.Generator,
    renderer: SubjectRenderer,
    kind: str,
    onset: int,
    emotion: str | None = None,
) -> Expression:
    """A random expression of `kind` starting at frame `onset` (emotion drawn if None)."""
    cfg = renderer.config
    if emotion is None:
        weights = np.asarray(cfg.emotion_weights, float)
        emotion = EMOTIONS_5[rng.choice(len(EMOTIONS_5), p=weights / weights.sum())]
    combos = AU_COMBOS[emotion]
    aus = combos[rng.integers(len(combos))]
    weights = {au: rng.uniform(0.6, 1.0) for au in aus}
    if kind == "micro":
        peak = rng.uniform(*cfg.micro_px) * cfg.px_scale
        rise = cfg.frames(rng.uniform(*cfg.micro_rise_ms))
        longest = int(cfg.micro_max_ms * cfg.fps / 1000.0)
        rise = min(rise, longest - 1)
        total = int(rng.integers(min(rise + max(1, rise // 2), longest), longest + 1))
    else:
        peak = rng.uniform(*cfg.macro_px) * cfg.px_scale
        total = cfg.frames(rng.uniform(*cfg.macro_ms))
        rise = min(cfg.frames(rng.uniform(*cfg.macro_rise_ms)), total - 1)
    scale = peak / renderer.peak_of(weights)
    return Expression(
        kind=kind,
        emotion=emotion,
        aus=tuple(aus),
        au_px=tuple(weights[a] * scale for a in aus),
        peak_px=peak,
        onset=onset,
        apex=onset + rise,
        offset=onset + total,
    )


def _draw_blinks(
    rng,
    config: SynthConfig,
    nuisances: Nuisances,
    start: int,
    stop: int,
    avoid: tuple[int, ...] = (),
) -> list[Blink]:
    """Poisson blinks in [start, stop), none active at the frames in `avoid`."""
    blinks = []
    if nuisances.blink_rate_hz <= 0:
        return blinks
    t = start + rng.exponential(config.fps / nuisances.blink_rate_hz)
    while t < stop:
        b = Blink(int(t), int(t) + config.frames(rng.uniform(*nuisances.blink_ms)))
        if b.end < stop and not any(b.start <= f <= b.end for f in avoid):
            blinks.append(b)
        t = b.end + rng.exponential(config.fps / nuisances.blink_rate_hz)
    return blinks


def _draw_gestures(
    rng, config: SynthConfig, nuisances: Nuisances, start: int, stop: int, busy: list
) -> list[Gesture]:
    """Head turns and hands over the mouth in [start, stop): a Poisson count of each at its
    rate, each placed at random where it meets no span of `busy` (the micro-expressions,
    with a margin) nor a gesture placed before it; one that finds no such place in 20 tries
    is left out (so a busy segment has fewer)."""
    nz, out, spans = nuisances, [], list(busy)
    kinds = (
        ("turn", nz.turn_rate_hz, nz.turn_ms, nz.turn_hold_ms),
        ("hand", nz.hand_rate_hz, nz.hand_ms, nz.hand_hold_ms),
    )
    for kind, rate, way_ms, hold_ms in kinds:
        if rate <= 0:
            continue
        for _ in range(rng.poisson(rate * (stop - start) / config.fps)):
            rise = config.frames(rng.uniform(*way_ms))
            length = 2 * rise + config.frames(rng.uniform(*hold_ms))
            amount = rng.uniform(*nz.turn_deg) * rng.choice((-1.0, 1.0)) if kind == "turn" else 1.0
            for _ in range(20):
                first = int(rng.integers(start, max(start + 1, stop - length)))
                if not any(first <= b and a <= first + length for a, b in spans):
                    out.append(Gesture(kind, first, first + length, rise, float(amount)))
                    spans.append((first, first + length))
                    break
    return out


# ----------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class Clip:
    """One recognition sample: frames `first`..`first + length - 1` (file-name numbers)."""

    subject: int
    filename: str
    first: int
    length: int
    expression: Expression  # onset/apex/offset in file-name numbers

    @property
    def frame_numbers(self) -> range:
        return range(self.first, self.first + self.length)


def make_clip(
    renderer: SubjectRenderer, subject: int, index: int, seed: int, emotion: str | None = None
) -> tuple[Clip, Timeline]:
    """Clip `index` of `subject`: one micro-expression between neutral margins."""
    cfg = renderer.config
    rng = np.random.default_rng([seed, subject, index, 0xC1])
    before = cfg.frames(rng.uniform(*cfg.clip_margin_ms))
    first = int(rng.integers(1, 300))  # clips are cut from longer recordings, as in CASME II
    expr = draw_expression(rng, renderer, "micro", first + before, emotion)
    after = cfg.frames(rng.uniform(*cfg.clip_margin_ms))
    length = expr.offset + after - first + 1
    timeline = Timeline(cfg, cfg.clip_nuisances, (seed, subject, index))
    timeline.expressions.append(expr)
    timeline.blinks = _draw_blinks(
        rng, cfg, cfg.clip_nuisances, first, first + length, avoid=(expr.onset, expr.apex)
    )
    name = f"EP{index // 10 + 1:02d}_{index % 10 + 1:02d}"
    return Clip(subject, name, first, length, expr), timeline


def _subject_clips(config: SynthConfig, seed: int, subject: int, out: str) -> list[dict]:
    """Worker: render and write every clip of one subject; return their sheet rows."""
    import cv2

    cv2.setNumThreads(1)
    renderer = SubjectRenderer(subject, seed, config)
    root = Path(out)
    rows = []
    for index in range(config.clips_per_subject):
        clip, timeline = make_clip(renderer, subject, index, seed)
        frames_dir = root / "CASME2_RAW_selected" / f"sub{subject:02d}" / clip.filename
        frames_dir.mkdir(parents=True, exist_ok=True)
        params = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
        for number in clip.frame_numbers:
            rgb = renderer.render(timeline.state(number))
            cv2.imwrite(str(frames_dir / f"img{number}.jpg"), rgb[..., ::-1], params)
        e = clip.expression
        flow = renderer.forward_flow(timeline.state(e.onset), timeline.state(e.apex))
        flow_dir = root / "flow" / f"sub{subject:02d}"
        flow_dir.mkdir(parents=True, exist_ok=True)
        np.save(flow_dir / f"{clip.filename}.npy", flow)
        rows.append(
            {
                "subject": subject,
                "filename": clip.filename,
                "first": clip.first,
                "last": clip.first + clip.length - 1,
                "onset": e.onset,
                "apex": e.apex,
                "offset": e.offset,
                "aus": e.au_string(),
                "emotion": e.emotion,
                "class3": e.label3 or "",
                "peak_px": round(e.peak_px, 4),
                "blinks": ";".join(f"{b.start}-{b.end}" for b in timeline.blinks),
            }
        )
    return rows


CLIP_CSV_COLUMNS = (
    "subject",
    "filename",
    "first",
    "last",
    "onset",
    "apex",
    "offset",
    "aus",
    "emotion",
    "class3",
    "peak_px",
    "blinks",
)


def write_clips(
    config: SynthConfig, out: Path, seed: int = 0, workers: int | None = None, progress: bool = True
) -> list[dict]:
    """Write the recognition clips in CASME II's layout under `out`:

    `CASME2_RAW_selected/subNN/EPxx_yy/img<n>.jpg`, the coding sheet
    `CASME2-coding-synthme.xlsx` (CASME II's columns), `flow/subNN/EPxx_yy.npy` (the exact
    onset-to-apex flow, (H, W, 2) float32, onset(x) ~ apex(x + flow(x))), and
    `synthme-clips.csv` with what the sheet cannot hold (first/last frame, 3-class label,
    peak displacement, blinks).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    subjects = range(1, config.subjects + 1)
    rows: list[dict] = []
    with (
        _progress(progress, config.subjects * config.clips_per_subject, "clips") as bar,
        _pool(workers) as pool,
    ):
        for subject_rows in pool.map(
            _subject_clips, *zip(*[(config, seed, s, str(out)) for s in subjects], strict=True)
        ):
            rows.extend(subject_rows)
            bar.update(len(subject_rows))
    casme2.write_sheet(
        out / "CASME2-coding-synthme.xlsx",
        [
            (
                r["subject"],
                r["filename"],
                None,
                r["onset"],
                r["apex"],
                r["offset"],
                None,
                r["aus"],
                r["emotion"],
            )
            for r in rows
        ],
    )
    _write_csv(out / "synthme-clips.csv", CLIP_CSV_COLUMNS, rows)
    write_identities(config, seed, out, subjects)
    return rows


IDENTITIES_CSV = "identities.csv"


def write_identities(config: SynthConfig, seed: int, out: Path, subjects) -> None:
    """`identities.csv` in `out`: each subject's kind of identity and the real photographs
    it is made of (portrait ids; "hopper"; empty for a parametric face), so that whatever
    trains, calibrates or chooses a model on the set can refuse held-out faces."""
    rows = [
        {
            "subject": s,
            "identities": config.identities,
            "sources": ";".join(identity_sources(config, s, seed)),
        }
        for s in subjects
    ]
    _write_csv(Path(out) / IDENTITIES_CSV, ("subject", "identities", "sources"), rows)


def read_identity_sources(folder: Path) -> dict[str, list[str]]:
    """Subject -> the photographs its identity is made of, from the `identities.csv` of a
    SynthME folder (its root, clips/ or long/); empty when there is none (not SynthME, or
    written before identities were recorded: parametric or the photograph only)."""
    folder = Path(folder)
    for candidate in (folder, folder / "clips", folder / "long"):
        path = candidate / IDENTITIES_CSV
        if path.is_file():
            with open(path, newline="") as f:
                return {
                    f"sub{int(r['subject']):02d}": [x for x in r["sources"].split(";") if x]
                    for r in csv.DictReader(f)
                }
    return {}


# ----------------------------------------------------------------------------- live stream


SEGMENT_SECONDS = 10.0


@dataclass(frozen=True)
class SynthFrame:
    index: int
    timestamp_ns: int  # capture time from the stream's start, at the stream's frame rate
    image: np.ndarray  # uint8 RGB (H, W, 3)


class SynthStream:
    """An endless video of one subject: micro- and macro-expressions among nuisances.

    Events are scheduled per 10 s segment (each from its own seed, never crossing a
    segment's end), so the first N frames are the same however far the stream runs:
    a long video is exactly a prefix of the stream of the same seed.
    """

    def __init__(self, config: SynthConfig, subject: int = 1, seed: int = 0, video: int = 0):
        self.config = config
        self.renderer = SubjectRenderer(subject, seed, config)
        self.subject, self.seed, self.video = subject, seed, video
        self.timeline = Timeline(config, config.nuisances, (seed, subject, video, 0x5E))
        self.segment_frames = int(round(SEGMENT_SECONDS * config.fps))
        self._scheduled = 0  # segments scheduled so far

    def _schedule_until(self, t: int) -> None:
        while self._scheduled * self.segment_frames <= t:
            self._schedule(self._scheduled)
            self._scheduled += 1

    def _schedule(self, segment: int) -> None:
        cfg, nz = self.config, self.config.nuisances
        rng = np.random.default_rng([self.seed, self.subject, self.video, segment, 0x5E])
        start, stop = segment * self.segment_frames, (segment + 1) * self.segment_frames
        kinds = ["micro"] * cfg.micro_per_segment + ["macro"] * nz.macro_per_segment
        rng.shuffle(kinds)
        gap = cfg.frames(400.0)  # quiet time between expressions
        slot = (stop - start) // max(1, len(kinds))
        for i, kind in enumerate(kinds):
            # One expression per slot, placed at random within it, never reaching its end.
            onset = start + i * slot + gap + int(rng.integers(0, max(1, slot // 3)))
            expr = draw_expression(rng, self.renderer, kind, onset)
            if expr.offset + gap > start + (i + 1) * slot:
                shift = expr.offset + gap - (start + (i + 1) * slot)
                expr = replace(
                    expr,
                    onset=expr.onset - shift,
                    apex=expr.apex - shift,
                    offset=expr.offset - shift,
                )
            self.timeline.expressions.append(expr)
        self.timeline.blinks += _draw_blinks(rng, cfg, nz, start, stop)
        # from their own seed: the expressions and blinks are those of a config without them
        margin = cfg.frames(200.0)
        busy = [
            (e.onset - margin, e.offset + margin)
            for e in self.timeline.expressions
            if e.kind == "micro" and start <= e.onset < stop
        ]
        self.timeline.gestures += _draw_gestures(
            np.random.default_rng([self.seed, self.subject, self.video, segment, 0x6E]),
            cfg,
            nz,
            start,
            stop,
            busy,
        )

    def frame(self, t: int) -> SynthFrame:
        self._schedule_until(t)
        image = self.renderer.render(self.timeline.state(t))
        return SynthFrame(t, round(t * 1e9 / self.config.fps), image)

    def __iter__(self) -> Iterator[SynthFrame]:
        t = 0
        while True:
            yield self.frame(t)
            t += 1

    def expressions_until(self, t: int) -> list[Expression]:
        """Ground truth: every expression whose onset is before frame t."""
        self._schedule_until(t)
        return [e for e in self.timeline.expressions if e.onset < t]

    def blinks_until(self, t: int) -> list[Blink]:
        self._schedule_until(t)
        return [b for b in self.timeline.blinks if b.start < t]

    def gestures_until(self, t: int) -> list[Gesture]:
        self._schedule_until(t)
        return [g for g in self.timeline.gestures if g.start < t]


# ----------------------------------------------------------------------------- long videos


LONG_CSV_COLUMNS = (
    "video",
    "subject",
    "kind",
    "onset",
    "apex",
    "offset",
    "class",
    "emotion",
    "aus",
    "peak_px",
)
NUISANCE_CSV_COLUMNS = ("video", "kind", "start", "end")


def long_video_name(config: SynthConfig, video: int, subject: int) -> str:
    return f"sub{subject:02d}_long{video + 1:02d}.{ENCODINGS[config.codec].ext}"


def encode_video(
    path: Path, frames, fps: float, codec: str, size: tuple[int, int], gop_s: float = 1.0
) -> None:
    """Encode frames with PyAV as `ENCODINGS[codec]` says, in yuv420p. Frames are RGB
    uint8 arrays, or yuv420p `av.VideoFrame`s (transcoding: the same pixels re-encoded).

    yuv420p is what cameras and RTSP streams deliver; FFV1 codes it losslessly, so the
    only loss is the RGB to 4:2:0 conversion itself (lossless RGB FFV1 costs three times
    the disk: 120 KB against 42 KB a frame of the standard config). Camera encodings: a
    key frame every `gop_s` seconds exactly (no scene-cut key frames), no B-frames, the
    `veryfast` preset a camera's encoder resembles; CRF, or CBR at the encoding's bits
    per pixel (rate control with a one-second buffer). Bit-exact flags keep the container
    free of encoder versions and random ids, so the same frames give the same bytes.
    """
    from fractions import Fraction

    import av

    enc = ENCODINGS[codec]
    h, w = size
    rate = Fraction(fps).limit_denominator(1000)
    gop = max(1, round(gop_s * fps))
    options: dict[str, str] = {}
    if enc.codec == "ffv1":
        options = {"level": "3", "slicecrc": "1"}
    elif not enc.camera:
        options = {"crf": str(enc.crf), "preset": "fast"}
    else:
        rc = f"crf={enc.crf}" if enc.crf is not None else ""
        bitrate = None
        if enc.bits_per_pixel is not None:
            bitrate = round(enc.bits_per_pixel * w * h * fps)
            kbps = bitrate // 1000
            rc = f"bitrate={kbps}:vbv-maxrate={kbps}:vbv-bufsize={kbps}"
            rc += ":nal-hrd=cbr" if enc.codec == "libx264" else ":strict-cbr=1"
        gop_opts = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"
        if enc.codec == "libx264":
            options = {"preset": "veryfast", "x264-params": f"{rc}:{gop_opts}".strip(":")}
        else:
            options = {
                "preset": "veryfast",
                "x265-params": f"{rc}:{gop_opts}:log-level=error".strip(":"),
            }
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(enc.codec, rate=rate, options=options)
        stream.pix_fmt = "yuv420p"
        stream.width, stream.height = w, h
        if enc.camera:
            stream.codec_context.gop_size = gop
            stream.codec_context.max_b_frames = 0
            if enc.bits_per_pixel is not None:
                stream.codec_context.bit_rate = bitrate
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        stream.codec_context.thread_count = 1
        for image in frames:
            if isinstance(image, np.ndarray):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            else:
                frame = av.VideoFrame.from_ndarray(image.to_ndarray(), format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def transcode(src: Path, dst: Path, codec: str, gop_s: float = 1.0) -> None:
    """Re-encode a (lossless) video's frames with another encoding: codecs compared on
    identical content."""
    import av

    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        size = (stream.codec_context.height, stream.codec_context.width)
        encode_video(dst, container.decode(stream), fps, codec, size, gop_s)


def _long_video(config: SynthConfig, seed: int, video: int, out: str):
    """Worker: one long video (a prefix of a SynthStream) and its ground truth."""
    import cv2

    cv2.setNumThreads(1)
    subject = video % config.subjects + 1
    stream = SynthStream(config, subject=subject, seed=seed, video=video)
    n = int(round(config.long_seconds * config.fps))
    name = long_video_name(config, video, subject)
    encode_video(
        Path(out) / name,
        (stream.frame(t).image for t in range(n)),
        config.fps,
        config.codec,
        config.frame_size,
        config.gop_s,
    )
    truth = [
        {
            "video": name,
            "subject": subject,
            "kind": e.kind,
            "onset": e.onset,
            "apex": e.apex,
            "offset": e.offset,
            "class": e.label3 or "",
            "emotion": e.emotion,
            "aus": e.au_string(),
            "peak_px": round(e.peak_px, 4),
        }
        for e in stream.expressions_until(n)
        if e.offset < n
    ]
    nuisances = [
        {"video": name, "kind": "blink", "start": b.start, "end": b.end}
        for b in stream.blinks_until(n)
        if b.end < n
    ] + [
        {"video": name, "kind": g.kind, "start": g.start, "end": g.end}
        for g in stream.gestures_until(n)
        if g.end < n
    ]
    return truth, nuisances


def write_long_videos(
    config: SynthConfig, out: Path, seed: int = 0, workers: int | None = None, progress: bool = True
) -> list[dict]:
    """Write `config.long_videos` long videos for spotting under `out`, with
    `ground_truth.csv` (LONG_CSV_COLUMNS; frames are 0-based indices in the video) and
    `nuisances.csv` (the blinks, head turns and hands over the mouth)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    truth, blinks = [], []
    videos = range(config.long_videos)
    with _progress(progress, config.long_videos, "long videos") as bar, _pool(workers) as pool:
        for t, b in pool.map(
            _long_video, *zip(*[(config, seed, v, str(out)) for v in videos], strict=True)
        ):
            truth += t
            blinks += b
            bar.update(1)
    write_identities(config, seed, out, sorted({v % config.subjects + 1 for v in videos}))
    _write_csv(out / "ground_truth.csv", LONG_CSV_COLUMNS, truth)
    _write_csv(out / "nuisances.csv", NUISANCE_CSV_COLUMNS, blinks)
    return truth


# ----------------------------------------------------------------------------- preview


def write_previews(config: SynthConfig, out: Path, seed: int = 0, gain: float = 12.0) -> list[Path]:
    """One PNG per emotion: onset, apex, and |apex - onset| magnified `gain` times, drawn
    on subject 1 with nuisances off so the difference shows the expression alone; and
    `subjects.png`, the neutral faces of the first 16 subjects."""
    import cv2

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    quiet = replace(config, clip_nuisances=Nuisances.none())
    renderer = SubjectRenderer(1, seed, quiet)
    paths = []
    for i, emotion in enumerate(EMOTIONS_5):
        clip, timeline = make_clip(renderer, 1, i, seed, emotion=emotion)
        e = clip.expression
        onset = renderer.render(timeline.state(e.onset))
        apex = renderer.render(timeline.state(e.apex))
        diff = np.abs(apex.astype(np.float32) - onset.astype(np.float32)).mean(axis=2)
        diff = cv2.applyColorMap(
            np.clip(diff * gain, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO
        )
        panel = np.hstack([onset[..., ::-1], apex[..., ::-1], diff])
        band = np.zeros((36, panel.shape[1], 3), np.uint8)
        label = (
            f"{emotion} ({e.label3 or 'dropped in 3-class'})  AU {e.au_string()}  "
            f"peak {e.peak_px:.2f}px  onset | apex | diff x{gain:g}"
        )
        cv2.putText(
            band, label, (6, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )
        path = out / f"{emotion}.png"
        cv2.imwrite(str(path), np.vstack([band, panel]))
        paths.append(path)
    # Every subject's neutral face, four to a row: identity is what a classifier must ignore.
    tile = 160 / config.frame_size[1]  # tiles 160 px wide
    faces = [
        cv2.resize(
            SubjectRenderer(s, seed, quiet).render(FrameState({}))[..., ::-1],
            None,
            fx=tile,
            fy=tile,
            interpolation=cv2.INTER_AREA,
        )
        for s in range(1, min(config.subjects, 16) + 1)
    ]
    faces += [np.zeros_like(faces[0])] * (-len(faces) % 4)
    grid = np.vstack([np.hstack(faces[i : i + 4]) for i in range(0, len(faces), 4)])
    cv2.imwrite(str(out / "subjects.png"), grid)
    return [*paths, out / "subjects.png"]


def write_realistic_previews(out: Path, seed: int = 0) -> list[Path]:
    """`identities.png`: a frame of each identity kind of realistic mode (a parametric face
    with photographic skin detail and camera noise; photographic identities, a tuning one
    and a held-out, mirrored one); `encodings.png`: the same 96 px patch of a photographic
    face (mouth and chin) in each encoding of `ENCODINGS`, enlarged 3 times."""
    import tempfile

    import av
    import cv2

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    faces = []
    for preset, subject, s, label in (
        ("standard", 1, seed, "parametric (standard)"),
        ("camera", 1, seed, "parametric + skin detail"),
        ("photo", 1, seed, "photo, tuning"),
        ("photo", 2, seed + 1, "photo, held out"),
    ):
        rgb = SynthStream(CONFIGS[preset], subject=subject, seed=s).frame(0).image[..., ::-1]
        tile = np.ascontiguousarray(rgb)
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        faces.append(tile)
    paths = [out / "identities.png"]
    cv2.imwrite(str(paths[0]), np.hstack(faces))
    cfg = CONFIGS["photo"]
    stream = SynthStream(cfg, subject=1, seed=seed)
    frames = [stream.frame(t).image for t in range(60)]
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, enc in ENCODINGS.items():
            path = Path(tmp) / f"{name}.{enc.ext}"
            encode_video(path, frames, cfg.fps, name, cfg.frame_size, gop_s=0.25)
            with av.open(str(path)) as container:
                decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            h, w = cfg.frame_size
            y0, x0 = int(0.62 * h), w // 2 - 48
            patch = decoded[-1][y0 : y0 + 96, x0 : x0 + 96, ::-1]  # a P-frame, mid-GOP
            patch = cv2.resize(patch, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
            cv2.putText(patch, enc.label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1)
            tiles.append(patch)
    paths.append(out / "encodings.png")
    cv2.imwrite(
        str(paths[1]),
        np.vstack(
            [
                np.hstack(tiles[:4]),
                np.hstack(tiles[4:] + [np.zeros_like(tiles[0])] * (8 - len(tiles))),
            ]
        ),
    )
    return paths


# ----------------------------------------------------------------------------- a whole set


def generate(
    config: SynthConfig,
    out: Path,
    seed: int = 0,
    preview: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write a whole SynthME set under `out`: `clips/`, `long/`, optionally `preview/`,
    and `synthme.json` (config, seed, counts). Returns that manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clips = write_clips(config, out / "clips", seed, workers, progress)
    truth = write_long_videos(config, out / "long", seed, workers, progress)
    if preview:
        write_previews(config, out / "preview", seed)
        write_realistic_previews(out / "preview", seed)
    manifest = {
        "generator": "SynthME",
        "config": asdict(config),
        "seed": seed,
        "clips": len(clips),
        "clips_per_emotion": {e: sum(r["emotion"] == e for r in clips) for e in EMOTIONS_5},
        "long_videos": config.long_videos,
        "long_expressions": {k: sum(r["kind"] == k for r in truth) for k in ("micro", "macro")},
    }
    (out / "synthme.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_csv(path: Path, columns, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


class _SerialPool:
    def map(self, fn, *iterables):
        return map(fn, *iterables)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _StoppingPool(ProcessPoolExecutor):
    """A process pool that, left by an exception (Ctrl-C above all), stops its workers
    instead of waiting for them: they ignore SIGINT (`quiet_worker`), and a task of
    spot-eval's sweep renders and encodes a whole cell, minutes (before: Ctrl-C there
    waited for every running cell to finish)."""

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return super().__exit__(exc_type, exc, tb)
        workers = list((self._processes or {}).values())
        self.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(10)
        return False


def _pool(workers: int | None):
    """Worker processes (one per core by default); `workers=1` runs in this process."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return _SerialPool()
    import multiprocessing

    return _StoppingPool(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=quiet_worker
    )


def quiet_worker() -> None:
    """A worker process leaves Ctrl-C to its parent (which stops the pool and says so in
    one line): each worker's own KeyboardInterrupt traceback was some 30 lines."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _progress(enabled: bool, total: int, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=f" {unit}", disable=not enabled, dynamic_ncols=True)
