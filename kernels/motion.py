"""The onset-to-apex motion of a spotted pair: what MFVAN's motion input is made of.

`pair_flow(onset, apex)` is the spotter's own measurement (`spotter.Spotter._measure`)
applied to the two crops the recognizer classifies: the head's rigid motion between them
is fitted on the rigid regions and undone, half on each image (`signals.rigid_motion`,
`signals.warp_halves`), and the dense flow of what is left is taken with the spotter's
kernel and parameters (`flow.dense_flow`, `flow.FlowParams()`). What remains is the
expression's motion, in px of the crop given.

The spot stage computes it once per emitted pair, on the crops it sends, and sends it with
them; training computes it with this same function on crops of the same size (the live
crop, `LIVE_CROP` px), so the network sees the same input in both. Its cost is one
rigid fit and one dense flow at 128 px (about 1-2 ms), paid only when a pair is emitted.

Imports nothing of this project outside `mfvan.kernels`.
"""

from __future__ import annotations

import numpy as np

from mfvan.kernels import flow as _flow
from mfvan.kernels import signals as _signals

LIVE_CROP = 128  # px: the side of the crops the spot stage emits (and the flow's)
MAX_FLOW = 64.0  # px: the most a pair's flow may hold on the wire (`protocol.MAX_FLOW`)


def pair_flow(
    onset: np.ndarray, apex: np.ndarray, params: _flow.FlowParams | None = None
) -> np.ndarray:
    """Flow from `onset` to `apex` (square grey crops of one size, uint8 or float 0-255),
    head motion undone: (S, S, 2) float32, (dx, dy) in px of the crop."""
    if onset.ndim != 2 or onset.shape != apex.shape or onset.shape[0] != onset.shape[1]:
        raise ValueError(
            f"pair_flow needs two square grey crops of one shape, got {onset.shape} and "
            f"{apex.shape}"
        )
    a = np.ascontiguousarray(onset, dtype=np.float32)
    b = np.ascontiguousarray(apex, dtype=np.float32)
    rigid = _signals.rigid_motion(a, b, _signals.roi_boxes(a.shape[0], _signals.RIGID))
    a, b = _signals.warp_halves(a, b, rigid)
    return _flow.dense_flow(a, b, params)


def wire_flow(onset: np.ndarray, apex: np.ndarray) -> np.ndarray:
    """`pair_flow` as a pair carries it: float16, clipped to +-MAX_FLOW px. The spot stage
    sends this, and `mfvan spot-eval` classifies with it, so both feed the same values."""
    return np.clip(pair_flow(onset, apex), -MAX_FLOW, MAX_FLOW).astype(np.float16)
