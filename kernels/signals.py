"""What the spotter reads from a face and its flow field: the head's rigid motion (to take
out before the flow), each region's texture weight, and per-region mean magnitude and main
direction; and optical strain, OFF-ApexNet's third input (`mfvan.model.data.pairs`).
Numba kernels; those on flow take the (H, W, 2) float32 flow of `flow.dense_flow`.

Regions (`ROIS`) are boxes in fractions of an aligned face crop as `faces.make_crop` makes
it (eyes level at (0.35, 0.40) and (0.65, 0.40) of the side): brows, eyes, nose bridge, nose
wings, mouth corners and chin, after the facial regions of interest of the MEGC spotting
baselines (Li et al. 2019 and later), which follow the action units micro-expressions use.
The nose bridge, temples and forehead (`RIGID`) move with the head and barely with any
expression: `rigid_motion` fits a similarity transform to them, which the spotter takes
out of both frames before their flow (`warp_halves`). The eyes are measured but not part
of the spotting signal, because blinks are not micro-expressions.

Main direction (after Liu et al.'s MDMD, 2016): a region's flow vectors are voted into 8
direction bins weighted by magnitude; the main direction is the mean vector of the winning
bin's pixels, so the motion that dominates a region is not cancelled by noise pointing
everywhere else.

Imports nothing of this project.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# name: (x0, y0, x1, y1) as fractions of the crop's side
ROIS: dict[str, tuple[float, float, float, float]] = {
    "brow_left": (0.24, 0.23, 0.46, 0.35),
    "brow_right": (0.54, 0.23, 0.76, 0.35),
    "eye_left": (0.25, 0.35, 0.45, 0.46),
    "eye_right": (0.55, 0.35, 0.75, 0.46),
    "nose_bridge": (0.45, 0.37, 0.55, 0.50),
    "nose": (0.38, 0.52, 0.62, 0.63),
    "mouth_left": (0.32, 0.63, 0.48, 0.78),
    "mouth_right": (0.52, 0.63, 0.68, 0.78),
    "chin": (0.40, 0.78, 0.60, 0.90),
    # rigid: they move with the head, not with expressions (SynthME's and real faces')
    "temple_left": (0.12, 0.30, 0.26, 0.60),
    "temple_right": (0.74, 0.30, 0.88, 0.60),
    "forehead": (0.35, 0.10, 0.65, 0.22),
}
RIGID = ("nose_bridge", "temple_left", "temple_right", "forehead")
REFERENCE = "nose_bridge"
EXCLUDED = ("eye_left", "eye_right", *RIGID)  # not in the spotting signal
SIGNAL_ROIS = tuple(name for name in ROIS if name not in EXCLUDED)
# a blink's motion reaches these (the dense flow's smoothing, the lids' skin, glasses' rims)
NEAR_EYES = ("brow_left", "brow_right", "nose")


def roi_boxes(size: int, names=tuple(ROIS)) -> np.ndarray:
    """(len(names), 4) int32 pixel boxes (x0, y0, x1, y1) in a size x size crop."""
    boxes = []
    for name in names:
        x0, y0, x1, y1 = ROIS[name]
        boxes.append(
            [
                int(round(x0 * size)),
                int(round(y0 * size)),
                int(round(x1 * size)),
                int(round(y1 * size)),
            ]
        )
    return np.asarray(boxes, np.int32)


@njit(cache=True, fastmath=True)
def optical_strain(flow):
    """Magnitude of the infinitesimal strain tensor, sqrt(ux^2 + vy^2 + (uy + vx)^2 / 2),
    with central differences (one-sided at the border)."""
    h, w = flow.shape[:2]
    out = np.empty((h, w), np.float32)
    for y in range(h):
        ym, yp = max(y - 1, 0), min(y + 1, h - 1)
        for x in range(w):
            xm, xp = max(x - 1, 0), min(x + 1, w - 1)
            ux = (flow[y, xp, 0] - flow[y, xm, 0]) / (xp - xm)
            uy = (flow[yp, x, 0] - flow[ym, x, 0]) / (yp - ym)
            vx = (flow[y, xp, 1] - flow[y, xm, 1]) / (xp - xm)
            vy = (flow[yp, x, 1] - flow[ym, x, 1]) / (yp - ym)
            out[y, x] = np.sqrt(ux * ux + vy * vy + 0.5 * (uy + vx) * (uy + vx))
    return out


def texture_weight(img):
    """Per pixel, how well the image's texture pins the flow down: the smaller eigenvalue
    of the structure tensor summed over 5 x 5 pixels, as c / (c + the image's median c),
    0-1 (0 on flat skin, where the flow is what the coarse levels and the smoothness
    said). The median and the ratio are NumPy's: Numba's `np.median` alone took 3 s to
    compile on a first start, and this runs four times a second."""
    c = _min_eigenvalue(img)
    med = max(float(np.median(c)), 1e-6)
    return c / (c + np.float32(med))


@njit(cache=True, fastmath=True)
def _min_eigenvalue(img):
    """The smaller eigenvalue of the structure tensor summed over 5 x 5 pixels."""
    h, w = img.shape
    gxx = np.zeros((h, w), np.float32)
    gyy = np.zeros((h, w), np.float32)
    gxy = np.zeros((h, w), np.float32)
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            gx = 0.5 * (img[y, x + 1] - img[y, x - 1])
            gy = 0.5 * (img[y + 1, x] - img[y - 1, x])
            gxx[y, x] = gx * gx
            gyy[y, x] = gy * gy
            gxy[y, x] = gx * gy
    c = np.zeros((h, w), np.float32)
    for y in range(2, h - 2):
        for x in range(2, w - 2):
            a = 0.0
            b = 0.0
            d = 0.0
            for j in range(-2, 3):
                for i in range(-2, 3):
                    a += gxx[y + j, x + i]
                    b += gxy[y + j, x + i]
                    d += gyy[y + j, x + i]
            tr = 0.5 * (a + d)
            c[y, x] = tr - np.sqrt(max(tr * tr - (a * d - b * b), 0.0))
    return c


@njit(cache=True, fastmath=True)
def roi_stats(flow, boxes, weight=None):
    """Per box: mean magnitude, and the main direction's mean vector (dx, dy), each pixel
    counted by `weight` (an image of weights, e.g. `texture_weight`; all 1 when None).
    Returns (len(boxes), 3) float32: magnitude, main dx, main dy."""
    out = np.zeros((boxes.shape[0], 3), np.float32)
    votes = np.empty(8, np.float64)
    sums = np.empty((8, 2), np.float64)
    counts = np.empty(8, np.float64)
    for i in range(boxes.shape[0]):
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        votes[:] = 0.0
        sums[:] = 0.0
        counts[:] = 0.0
        total = 0.0
        n = 0.0
        for y in range(y0, y1):
            for x in range(x0, x1):
                u, v = flow[y, x, 0], flow[y, x, 1]
                # no image of ones allocated per call: Numba compiles the None case apart
                wt = np.float32(1.0) if weight is None else weight[y, x]
                m = np.sqrt(u * u + v * v)
                total += wt * m
                n += wt
                b = _octant(u, v)
                votes[b] += wt * m
                sums[b, 0] += wt * u
                sums[b, 1] += wt * v
                counts[b] += wt
        best = np.argmax(votes)
        out[i, 0] = total / max(n, 1e-6)
        if counts[best] > 0:
            out[i, 1] = sums[best, 0] / counts[best]
            out[i, 2] = sums[best, 1] / counts[best]
    return out


@njit(cache=True, fastmath=True)
def _octant(u, v):
    """The 45-degree sector of the direction atan2(v, u), counted from -pi (0: -pi to -3/4
    pi), from the signs and sizes of u and v; on a sector's edge (u or v zero, or |u| = |v|)
    from atan2 itself, so that the sector is always the one atan2 gives."""
    au, av = abs(u), abs(v)
    if u == 0 or v == 0 or au == av:
        return int(np.floor((np.arctan2(v, u) + np.pi) / (2 * np.pi) * 8.0)) % 8
    if v < 0:
        if u < 0:
            return 0 if av < au else 1
        return 2 if av > au else 3
    if u > 0:
        return 4 if av < au else 5
    return 6 if av > au else 7


@njit(cache=True, fastmath=True)
def _similarity_step(a, b, boxes, p):
    """One Gauss-Newton step of the similarity fit: the increment to p = (tx, ty, s, r)."""
    h, w = a.shape
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    ata = np.zeros((4, 4), np.float64)
    atb = np.zeros(4, np.float64)
    jac = np.empty(4, np.float64)
    for i in range(boxes.shape[0]):
        for y in range(max(boxes[i, 1], 1), min(boxes[i, 3], h - 1)):
            for x in range(max(boxes[i, 0], 1), min(boxes[i, 2], w - 1)):
                xr, yr = x - cx, y - cy
                dx = p[0] + p[2] * xr - p[3] * yr
                dy = p[1] + p[3] * xr + p[2] * yr
                bw, gx, gy = _sample_with_gradient(b, y + dy, x + dx)
                gx = 0.5 * (gx + 0.5 * (a[y, x + 1] - a[y, x - 1]))
                gy = 0.5 * (gy + 0.5 * (a[y + 1, x] - a[y - 1, x]))
                r = bw - a[y, x]
                # Huber's weight (4 grey levels): see `rigid_motion`
                wr = 1.0 if abs(r) <= 4.0 else 4.0 / abs(r)
                jac[0], jac[1] = gx, gy
                jac[2] = gx * xr + gy * yr
                jac[3] = -gx * yr + gy * xr
                for j in range(4):
                    atb[j] += wr * jac[j] * r
                    for k in range(4):
                        ata[j, k] += wr * jac[j] * jac[k]
    for j in range(4):
        ata[j, j] += 1e-3
    return -_solve_spd(ata, atb)


@njit(cache=True, fastmath=True)
def _solve_spd(m, v):
    """x with m x = v, for a small symmetric positive-definite m (normal equations with a
    ridge), by Cholesky. Written out rather than `np.linalg.solve`: Numba compiles LAPACK's
    binding for about 10 s on a first start, this in well under one."""
    n = m.shape[0]
    low = np.zeros((n, n), np.float64)
    for i in range(n):
        for j in range(i + 1):
            acc = m[i, j]
            for k in range(j):
                acc -= low[i, k] * low[j, k]
            low[i, j] = np.sqrt(max(acc, 1e-300)) if i == j else acc / low[j, j]
    y = np.empty(n, np.float64)
    for i in range(n):
        acc = v[i]
        for k in range(i):
            acc -= low[i, k] * y[k]
        y[i] = acc / low[i, i]
    x = np.empty(n, np.float64)
    for i in range(n - 1, -1, -1):
        acc = y[i]
        for k in range(i + 1, n):
            acc -= low[k, i] * x[k]
        x[i] = acc / low[i, i]
    return x


@njit(cache=True, fastmath=True)
def _sample_with_gradient(img, y, x):
    h, w = img.shape
    x = min(max(x, 1.0), w - 2.001)
    y = min(max(y, 1.0), h - 2.001)
    x0, y0 = int(x), int(y)
    fx, fy = x - x0, y - y0
    v00, v01 = img[y0, x0], img[y0, x0 + 1]
    v10, v11 = img[y0 + 1, x0], img[y0 + 1, x0 + 1]
    val = (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy
    gx = (v01 - v00) * (1 - fy) + (v11 - v10) * fy
    gy = (v10 - v00) * (1 - fx) + (v11 - v01) * fx
    return val, gx, gy


@njit(cache=True, fastmath=True)
def _blur3(img):
    h, w = img.shape
    out = np.empty_like(img)
    for y in range(h):
        ym, yp = max(y - 1, 0), min(y + 1, h - 1)
        for x in range(w):
            xm, xp = max(x - 1, 0), min(x + 1, w - 1)
            out[y, x] = (
                4 * img[y, x]
                + 2 * (img[y, xm] + img[y, xp] + img[ym, x] + img[yp, x])
                + img[ym, xm]
                + img[ym, xp]
                + img[yp, xm]
                + img[yp, xp]
            ) / 16.0
    return out


def rigid_motion(first, second, boxes, iterations=6, weight=None):
    """Head motion from `first` to `second` (float32 grey), fitted to the image pixels of
    `boxes` (the rigid regions) as a similarity: (tx, ty, s, r), the displacement of
    a pixel at (X, Y) from the crop centre being (tx + s X - r Y, ty + r X + s Y). Direct
    (Gauss-Newton on brightness, Bergen et al. 1992) rather than fitted to the dense flow,
    whose smoothness prior shrinks motion in textureless regions. The second image is first
    scaled to the first's mean brightness, as in `flow.dense_flow`; `weight` (an image of
    0-1 weights) measures that mean over part of the image only (the spotter leaves the
    eyes out: a blink changes their brightness, and the fit would read it as head motion).
    Each pixel's residual is weighted as in Huber's M-estimator: fully up to 4 grey levels,
    by 4 / |residual| beyond. A blink's lids reach the rigid regions of some faces (the
    temples, the nose bridge), and with every pixel weighted alike the fit followed them:
    on one held-out photographic face in FFV1 at 200 fps the fitted scale went from -0.1e-3
    to +2.3e-3 and the rotation from 6.2e-3 to 11.2e-3 rad while the eyes moved 1.3 px,
    about 0.1 px at the chin and the mouth corners; with the weights it stays flat.

    A Python function over one compiled fit (`_rigid_fit`): the gain is NumPy's, so the fit
    is compiled once, not once with and once without a weight image."""
    if weight is None:
        gain = float(first.mean()) / max(float(second.mean()), 1e-3)
    else:
        gain = float((first * weight).sum()) / max(float((second * weight).sum()), 1e-3)
    return _rigid_fit(first, second, boxes, iterations, gain)


@njit(cache=True, fastmath=True)
def _rigid_fit(first, second, boxes, iterations, gain):
    a = _blur3(first)
    b = _blur3(second) * gain
    p = np.zeros(4, np.float64)
    for _ in range(iterations):
        step = _similarity_step(a, b, boxes, p)
        p += step
        if np.abs(step).max() < 1e-3:
            break
    return p


@njit(cache=True, fastmath=True)
def warp_rigid(img, p):
    """`img` sampled at x + d(x) for the similarity p: the second image brought back onto
    the first, so that only non-rigid motion is left between them."""
    h, w = img.shape
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    out = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            xr, yr = x - cx, y - cy
            dx = p[0] + p[2] * xr - p[3] * yr
            dy = p[1] + p[3] * xr + p[2] * yr
            out[y, x] = _sample_with_gradient(img, y + dy, x + dx)[0]
    return out


@njit(cache=True, fastmath=True)
def warp_halves(first, second, p):
    """`first` and `second` each moved half the way of the similarity p, towards each
    other: the same as `warp_rigid(first, -p / 2)` and `warp_rigid(second, p / 2)`, in
    one pass (each pixel's displacement computed once)."""
    h, w = first.shape
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    a = np.empty((h, w), np.float32)
    b = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            xr, yr = x - cx, y - cy
            dx = 0.5 * (p[0] + p[2] * xr - p[3] * yr)
            dy = 0.5 * (p[1] + p[3] * xr + p[2] * yr)
            a[y, x] = _sample_with_gradient(first, y - dy, x - dx)[0]
            b[y, x] = _sample_with_gradient(second, y + dy, x + dx)[0]
    return a, b


def rigid_field(p, size: int) -> np.ndarray:
    """The (size, size, 2) displacement field of similarity p (for tests and figures)."""
    c = 0.5 * (size - 1)
    yr, xr = np.mgrid[0:size, 0:size].astype(np.float64) - c
    return np.dstack([p[0] + p[2] * xr - p[3] * yr, p[1] + p[3] * xr + p[2] * yr]).astype(
        np.float32
    )
