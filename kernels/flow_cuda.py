"""The spotter's dense flow (`mfvan.kernels.flow`) on a CUDA GPU, for a batch of K crop
pairs at once: one stream's pair or many streams' (a spot process serving many cameras).

Same method, same arithmetic, step by step: gain, pre-smoothing, high-pass, a pyramid of
2 x 2 means, and at each level, coarse to fine, warp / symmetric gradients / windowed
normal equations (box filter twice, from running sums) / 2 x 2 solve / flow smoothing.
Each step is one kernel launch for the whole batch (K images, or 5K windowed products),
never one per stream: a level costs about a dozen launches whatever K is. Threads: one per
pixel for the pointwise steps, one per row (then one per column) for the running-sum box
filters, whose sums run in the CPU kernel's order and precision (rows in float64, columns
in float32), so the flow matches the CPU kernel's within float32 rounding
(`tests/kernels/test_flow.py` checks it under Numba's CUDA simulator, `NUMBA_ENABLE_CUDASIM=1`,
and the GPU check on a GPU). The images' means (the gain) are summed in float64 by a block
per image.

`dense_flow_batch(first, second)` takes (K, H, W) grey crops (uint8 or float, NumPy) and
returns (K, H, W, 2) float32 flow, on the host. `available()` says whether a GPU (or the
simulator) is there; importing this module needs neither (the kernels compile at their
first launch). The kernels are module-level functions, as the simulator needs.

Imports nothing of this project outside `mfvan.kernels`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from .flow import FlowParams

TILE = 16  # threads per block side for the per-pixel kernels
ROWS = 128  # threads per block for the per-row and per-column kernels


def available() -> bool:
    """A CUDA device Numba can use (or its simulator, NUMBA_ENABLE_CUDASIM=1)."""
    try:
        return bool(cuda.is_available())
    except Exception:  # no driver, no toolkit, a broken install: the CPU kernel then
        return False


@cuda.jit(device=True)
def bilinear(img, k, y, x):
    h, w = img.shape[1], img.shape[2]
    x = min(max(x, 0.0), w - 1.001)
    y = min(max(y, 0.0), h - 1.001)
    x0, y0 = int(x), int(y)
    fx, fy = x - x0, y - y0
    top = img[k, y0, x0] * (1 - fx) + img[k, y0, x0 + 1] * fx
    bottom = img[k, y0 + 1, x0] * (1 - fx) + img[k, y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


@cuda.jit
def box_rows(src, dst, r):
    i = cuda.grid(1)
    n, h, w = src.shape
    if i >= n * h:
        return
    k, y = i // h, i % h
    acc = float64(0.0)
    for j in range(-r, r + 1):
        acc += src[k, y, min(max(j, 0), w - 1)]
    for x in range(w):
        dst[k, y, x] = acc / (2 * r + 1)
        acc += src[k, y, min(x + r + 1, w - 1)] - src[k, y, max(x - r, 0)]


@cuda.jit
def box_cols(src, dst, r):
    i = cuda.grid(1)
    n, h, w = src.shape
    if i >= n * w:
        return
    k, x = i // w, i % w
    acc = float32(0.0)
    for j in range(-r, r + 1):
        acc += src[k, min(max(j, 0), h - 1), x]
    for y in range(h):
        dst[k, y, x] = acc / (2 * r + 1)
        lo, hi = max(y - r, 0), min(y + r + 1, h - 1)
        acc += src[k, hi, x] - src[k, lo, x]


@cuda.jit
def means(img, out):
    """out[k] = the mean of image k: a block per image."""
    k = cuda.blockIdx.x
    t = cuda.threadIdx.x
    h, w = img.shape[1], img.shape[2]
    part = cuda.shared.array(256, float64)
    acc = float64(0.0)
    for p in range(t, h * w, cuda.blockDim.x):
        acc += img[k, p // w, p % w]
    part[t] = acc
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if t < step:
            part[t] += part[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        out[k] = part[0] / (h * w)


@cuda.jit
def scale(img, ma, mb):
    x, y, k = cuda.grid(3)
    if k < img.shape[0] and y < img.shape[1] and x < img.shape[2]:
        img[k, y, x] = img[k, y, x] * (ma[k] / max(mb[k], 1e-3))


@cuda.jit
def subtract(a, b):
    x, y, k = cuda.grid(3)
    if k < a.shape[0] and y < a.shape[1] and x < a.shape[2]:
        a[k, y, x] -= b[k, y, x]


@cuda.jit
def downsample(img, out):
    x, y, k = cuda.grid(3)
    if k < out.shape[0] and y < out.shape[1] and x < out.shape[2]:
        out[k, y, x] = float32(0.25) * (
            img[k, 2 * y, 2 * x]
            + img[k, 2 * y, 2 * x + 1]
            + img[k, 2 * y + 1, 2 * x]
            + img[k, 2 * y + 1, 2 * x + 1]
        )


@cuda.jit
def upsample(f, out):
    x, y, k = cuda.grid(3)
    h, w = out.shape[1], out.shape[2]
    if k < out.shape[0] and y < h and x < w:
        sy, sx = f.shape[1] / h, f.shape[2] / w
        out[k, y, x] = 2.0 * bilinear(f, k, (y + 0.5) * sy - 0.5, (x + 0.5) * sx - 0.5)


@cuda.jit
def warp(b, u, v, bw):
    x, y, k = cuda.grid(3)
    if k < b.shape[0] and y < b.shape[1] and x < b.shape[2]:
        bw[k, y, x] = bilinear(b, k, y + v[k, y, x], x + u[k, y, x])


@cuda.jit
def products(a, bw, j):
    """The five windowed products' raw values, j[5k + c] for image k."""
    x, y, k = cuda.grid(3)
    h, w = a.shape[1], a.shape[2]
    if k >= a.shape[0] or y >= h or x >= w:
        return
    ym, yp = max(y - 1, 0), min(y + 1, h - 1)
    xm, xp = max(x - 1, 0), min(x + 1, w - 1)
    gx = 0.25 * (a[k, y, xp] - a[k, y, xm] + bw[k, y, xp] - bw[k, y, xm])
    gy = 0.25 * (a[k, yp, x] - a[k, ym, x] + bw[k, yp, x] - bw[k, ym, x])
    gt = bw[k, y, x] - a[k, y, x]
    j[5 * k, y, x] = gx * gx
    j[5 * k + 1, y, x] = gx * gy
    j[5 * k + 2, y, x] = gy * gy
    j[5 * k + 3, y, x] = gx * gt
    j[5 * k + 4, y, x] = gy * gt


@cuda.jit
def solve(j, u, v, ridge):
    x, y, k = cuda.grid(3)
    if k >= u.shape[0] or y >= u.shape[1] or x >= u.shape[2]:
        return
    p = j[5 * k, y, x] + ridge
    q = j[5 * k + 1, y, x]
    r = j[5 * k + 2, y, x] + ridge
    det = p * r - q * q
    u[k, y, x] -= (r * j[5 * k + 3, y, x] - q * j[5 * k + 4, y, x]) / det
    v[k, y, x] -= (p * j[5 * k + 4, y, x] - q * j[5 * k + 3, y, x]) / det


def _compile() -> dict:
    """The kernels by name (compiled by Numba at their first launch)."""
    return dict(
        box_rows=box_rows,
        box_cols=box_cols,
        means=means,
        scale=scale,
        subtract=subtract,
        downsample=downsample,
        upsample=upsample,
        warp=warp,
        products=products,
        solve=solve,
        cuda=cuda,
    )


def _grid(shape) -> tuple:
    n, h, w = shape
    return (math.ceil(w / TILE), math.ceil(h / TILE), n), (TILE, TILE, 1)


def _smooth(k, img, r: int, tmp) -> None:
    """Box filter of radius r twice, in place, over every image of the (N, H, W) batch."""
    if r == 0:
        return
    n, h, w = img.shape
    for _ in range(2):
        k["box_rows"][math.ceil(n * h / ROWS), ROWS](img, tmp, r)
        k["box_cols"][math.ceil(n * w / ROWS), ROWS](tmp, img, r)


def dense_flow_batch(
    first: np.ndarray, second: np.ndarray, params: FlowParams | None = None
) -> np.ndarray:
    """Flow from each `first[k]` to `second[k]`, (K, H, W) grey (uint8 or float in 0-255),
    as (K, H, W, 2) float32 (dx, dy) in pixels: `mfvan.kernels.flow.dense_flow` of each
    pair, computed on the GPU for the whole batch."""
    p = params or FlowParams()
    if first.ndim != 3 or first.shape != second.shape:
        raise ValueError(
            f"dense_flow_batch needs two (K, H, W) batches of one shape, got {first.shape} "
            f"and {second.shape}"
        )
    if min(first.shape[1:]) < 8:
        raise ValueError(f"dense_flow_batch needs crops of at least 8 x 8 px, got {first.shape}")
    k = _compile()
    cuda = k["cuda"]
    n, h, w = first.shape
    a = cuda.to_device(np.ascontiguousarray(first, dtype=np.float32))
    b = cuda.to_device(np.ascontiguousarray(second, dtype=np.float32))
    tmp = cuda.device_array((n, h, w), np.float32)
    grid, block = _grid((n, h, w))
    if p.gain:
        ma, mb = cuda.device_array(n, np.float64), cuda.device_array(n, np.float64)
        k["means"][n, 256](a, ma)
        k["means"][n, 256](b, mb)
        k["scale"][grid, block](b, ma, mb)
    _smooth(k, a, p.presmooth, tmp)
    _smooth(k, b, p.presmooth, tmp)
    if p.highpass > 0:
        for img in (a, b):
            low = cuda.device_array_like(img)
            low.copy_to_device(img)
            _smooth(k, low, p.highpass, tmp)
            k["subtract"][grid, block](img, low)
    pyr_a, pyr_b = [a], [b]
    for _ in range(p.levels - 1):
        ph, pw = pyr_a[-1].shape[1:]
        if min(ph, pw) < 16:
            break
        down = (n, ph // 2, pw // 2)
        for pyr in (pyr_a, pyr_b):
            out = cuda.device_array(down, np.float32)
            k["downsample"][_grid(down)](pyr[-1], out)
            pyr.append(out)
    top = len(pyr_a) - 1
    # u (images 0..K-1) and v (K..2K-1) in one array: smoothed and upsampled together
    uv = cuda.to_device(np.zeros((2 * n, *pyr_a[top].shape[1:]), np.float32))
    for level in range(top, -1, -1):
        la, lb = pyr_a[level], pyr_b[level]
        if uv.shape[1:] != la.shape[1:]:
            up = cuda.device_array((2 * n, *la.shape[1:]), np.float32)
            k["upsample"][_grid(up.shape)](uv, up)
            uv = up
        _solve_level(k, la, lb, uv, p)
    flow = uv.copy_to_host()
    return np.ascontiguousarray(np.stack([flow[:n], flow[n:]], axis=-1))


def _solve_level(k, a, b, uv, p: FlowParams) -> None:
    cuda = k["cuda"]
    n, h, w = a.shape
    u, v = uv[:n], uv[n:]
    grid, block = _grid((n, h, w))
    bw = cuda.device_array((n, h, w), np.float32)
    j = cuda.device_array((5 * n, h, w), np.float32)
    tmp5 = cuda.device_array((5 * n, h, w), np.float32)
    tmp2 = cuda.device_array((2 * n, h, w), np.float32)
    for _ in range(p.iterations):
        k["warp"][grid, block](b, u, v, bw)
        k["products"][grid, block](a, bw, j)
        _smooth(k, j, p.radius, tmp5)
        k["solve"][grid, block](j, u, v, np.float32(p.ridge))
        _smooth(k, uv, p.flow_smooth, tmp2)


def flow_fn(params: FlowParams | None = None):
    """A `Spotter(flow_fn=...)` for one pair at a time on the GPU (a batch of one)."""

    def one(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return dense_flow_batch(first[None], second[None], params)[0]

    return one
