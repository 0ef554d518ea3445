"""Dense optical flow between two small grey crops, in Numba.

Method: pyramidal dense Lucas-Kanade with iterative warping (Lucas & Kanade 1981; the dense,
windowed form is Bruhn, Weickert & Schnorr's "local" half of CLG, 2005). At each pyramid
level, coarse to fine, and for `iterations` rounds: warp the second image by the current
flow, take the symmetric gradients (mean of both images') and the temporal difference,
average the five products Ix^2, IxIy, Iy^2, IxIt, IyIt over a window around each pixel,
and solve each pixel's 2 x 2 normal equations for the flow increment. The window is a box
filter applied twice (a triangle of radius 2 * `radius`), built from running sums, so its
cost does not depend on its size. A small `ridge` on the diagonal keeps textureless
windows (flat cheeks) at zero increment instead of amplifying noise. The inputs are
pre-smoothed with the same kind of filter (radius `presmooth`) to suppress sensor noise.

Why this method: micro-expressions seen in an aligned face crop are smooth, sub-pixel
motions; a local least-squares fit over a window of a few pixels measures them without
the patch quantisation of block matching and without the dozens of global relaxation
sweeps of a variational method (Horn-Schunck with coarse-to-fine warping, our first try,
was both slower and, on SynthME's noisy frames, less accurate). Large displacements do not
occur after face alignment; two pyramid levels cover the residual head drift.

Convention: `flow[y, x] = (dx, dy)` with first(x) ~ second(x + flow(x)), as OpenCV's
`calcOpticalFlowFarneback(first, second)` and SynthME's ground truth.

Kernels take contiguous float32 arrays; `dense_flow` checks dtypes and shapes once and
calls them. `warm_up()` compiles everything (cached on disk by Numba, `cache=True`) and is
never inside a timed region. Single-threaded on purpose: at 64-256 px, thread start-up
costs more than it saves, and the live pipeline runs one stream per core.

Imports nothing of this project.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass(frozen=True)
class FlowParams:
    """Every knob of `dense_flow`, in pixels of the input crop."""

    levels: int = 3  # pyramid levels (1 = none); each halves the size
    iterations: int = 1  # warp-and-solve rounds per level
    radius: int = 4  # box radius of the averaging window (applied twice)
    presmooth: int = 1  # box radius of the input smoothing (applied twice; 0 = none)
    ridge: float = 10.0  # added to the normal equations' diagonal, grey levels^2
    highpass: int = 12  # box radius of the local mean removed from both inputs (0 = none)
    flow_smooth: int = 6  # box radius applied twice to the flow after each round (0 = none)
    gain: bool = True  # scale the second image to the first's mean (global light change)

    def __post_init__(self):
        if self.levels < 1 or self.iterations < 1 or self.radius < 1 or self.presmooth < 0:
            raise ValueError(f"FlowParams out of range: {self}")


@njit(cache=True, fastmath=True)
def _box_rows(src, dst, r):
    """dst = src averaged over [x - r, x + r] along each row, edges clamped."""
    h, w = src.shape
    n = 2 * r + 1
    for y in range(h):
        acc = 0.0
        for k in range(-r, r + 1):
            acc += src[y, min(max(k, 0), w - 1)]
        for x in range(w):
            dst[y, x] = acc / n
            acc += src[y, min(x + r + 1, w - 1)] - src[y, max(x - r, 0)]


@njit(cache=True, fastmath=True)
def _box_cols(src, dst, r):
    h, w = src.shape
    n = 2 * r + 1
    acc = np.zeros(w, np.float32)
    for k in range(-r, r + 1):
        acc += src[min(max(k, 0), h - 1)]
    for y in range(h):
        for x in range(w):
            dst[y, x] = acc[x] / n
        lo, hi = max(y - r, 0), min(y + r + 1, h - 1)
        for x in range(w):
            acc[x] += src[hi, x] - src[lo, x]


@njit(cache=True, fastmath=True)
def _smooth(img, r, tmp):
    """Box filter of radius r applied twice (a triangle window), in place; tmp is scratch."""
    if r == 0:
        return
    for _ in range(2):
        _box_rows(img, tmp, r)
        _box_cols(tmp, img, r)


@njit(cache=True, fastmath=True)
def _bilinear(img, y, x):
    h, w = img.shape
    x = min(max(x, 0.0), w - 1.001)
    y = min(max(y, 0.0), h - 1.001)
    x0, y0 = int(x), int(y)
    fx, fy = x - x0, y - y0
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


@njit(cache=True, fastmath=True)
def _downsample(img):
    """Half size: 2 x 2 means (the inputs are already smoothed)."""
    h, w = img.shape
    out = np.empty((h // 2, w // 2), np.float32)
    for y in range(h // 2):
        for x in range(w // 2):
            out[y, x] = 0.25 * (
                img[2 * y, 2 * x]
                + img[2 * y, 2 * x + 1]
                + img[2 * y + 1, 2 * x]
                + img[2 * y + 1, 2 * x + 1]
            )
    return out


@njit(cache=True, fastmath=True)
def _upsample(f, h, w):
    """Bilinear to (h, w), values doubled (a displacement scales with the image)."""
    fh, fw = f.shape
    out = np.empty((h, w), np.float32)
    sy, sx = fh / h, fw / w
    for y in range(h):
        for x in range(w):
            out[y, x] = 2.0 * _bilinear(f, (y + 0.5) * sy - 0.5, (x + 0.5) * sx - 0.5)
    return out


@njit(cache=True, fastmath=True)
def _solve_level(a, b, u, v, iterations, radius, ridge, flow_smooth):
    h, w = a.shape
    jxx = np.empty((h, w), np.float32)
    jxy = np.empty((h, w), np.float32)
    jyy = np.empty((h, w), np.float32)
    jxt = np.empty((h, w), np.float32)
    jyt = np.empty((h, w), np.float32)
    tmp = np.empty((h, w), np.float32)
    bw = np.empty((h, w), np.float32)
    for _ in range(iterations):
        for y in range(h):
            for x in range(w):
                bw[y, x] = _bilinear(b, y + v[y, x], x + u[y, x])
        for y in range(h):
            ym, yp = max(y - 1, 0), min(y + 1, h - 1)
            for x in range(w):
                xm, xp = max(x - 1, 0), min(x + 1, w - 1)
                gx = 0.25 * (a[y, xp] - a[y, xm] + bw[y, xp] - bw[y, xm])
                gy = 0.25 * (a[yp, x] - a[ym, x] + bw[yp, x] - bw[ym, x])
                gt = bw[y, x] - a[y, x]
                jxx[y, x] = gx * gx
                jxy[y, x] = gx * gy
                jyy[y, x] = gy * gy
                jxt[y, x] = gx * gt
                jyt[y, x] = gy * gt
        for j in (jxx, jxy, jyy, jxt, jyt):
            _smooth(j, radius, tmp)
        for y in range(h):
            for x in range(w):
                p = jxx[y, x] + ridge
                q = jxy[y, x]
                r = jyy[y, x] + ridge
                det = p * r - q * q
                u[y, x] -= (r * jxt[y, x] - q * jyt[y, x]) / det
                v[y, x] -= (p * jyt[y, x] - q * jxt[y, x]) / det
        _smooth(u, flow_smooth, tmp)
        _smooth(v, flow_smooth, tmp)


@njit(cache=True, fastmath=True)
def _flow(first, second, levels, iterations, radius, presmooth, ridge, highpass, flow_smooth, gain):
    h, w = first.shape
    tmp = np.empty((h, w), np.float32)
    a, b = first.copy(), second.copy()
    if gain:
        b *= a.mean() / max(b.mean(), 1e-3)
    _smooth(a, presmooth, tmp)
    _smooth(b, presmooth, tmp)
    if highpass > 0:
        la, lb = a.copy(), b.copy()
        _smooth(la, highpass, tmp)
        _smooth(lb, highpass, tmp)
        a -= la
        b -= lb
    pyr_a, pyr_b = [a], [b]
    for _ in range(levels - 1):
        if min(pyr_a[-1].shape) < 16:
            break
        pyr_a.append(_downsample(pyr_a[-1]))
        pyr_b.append(_downsample(pyr_b[-1]))
    top = len(pyr_a) - 1
    u = np.zeros(pyr_a[top].shape, np.float32)
    v = np.zeros(pyr_a[top].shape, np.float32)
    for level in range(top, -1, -1):
        la = pyr_a[level]
        if u.shape != la.shape:
            u = _upsample(u, la.shape[0], la.shape[1])
            v = _upsample(v, la.shape[0], la.shape[1])
        _solve_level(la, pyr_b[level], u, v, iterations, radius, ridge, flow_smooth)
    return u, v


def dense_flow(
    first: np.ndarray, second: np.ndarray, params: FlowParams | None = None
) -> np.ndarray:
    """Flow from `first` to `second` (2-D grey, same shape, uint8 or float in 0-255),
    as an (H, W, 2) float32 array of (dx, dy) in pixels."""
    p = params or FlowParams()
    if first.ndim != 2 or first.shape != second.shape:
        raise ValueError(
            f"dense_flow needs two 2-D grey images of one shape, got {first.shape} and "
            f"{second.shape}"
        )
    if min(first.shape) < 8:
        raise ValueError(f"dense_flow needs images of at least 8 x 8 px, got {first.shape}")
    a = np.ascontiguousarray(first, dtype=np.float32)
    b = np.ascontiguousarray(second, dtype=np.float32)
    u, v = _flow(
        a,
        b,
        p.levels,
        p.iterations,
        p.radius,
        p.presmooth,
        np.float32(p.ridge),
        p.highpass,
        p.flow_smooth,
        p.gain,
    )
    return _stack(u, v)


@njit(cache=True)
def _stack(u, v):
    """(H, W, 2) from u and v (np.dstack's result, without its overhead per call)."""
    h, w = u.shape
    out = np.empty((h, w, 2), np.float32)
    for y in range(h):
        for x in range(w):
            out[y, x, 0] = u[y, x]
            out[y, x, 1] = v[y, x]
    return out


def warm_up() -> None:
    """Compile (or load from Numba's on-disk cache) every kernel, outside any timing."""
    img = np.random.default_rng(0).random((32, 32), dtype=np.float32) * 255
    dense_flow(img, img)
