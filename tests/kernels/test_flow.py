"""The dense optical flow (`mfvan.kernels.flow`, and its batched CUDA twin) against known
motion, OpenCV's DIS and SynthME's exact flow."""

import os

import cv2
import numpy as np
import pytest
from warped import INTERIOR, affine, truth_field

from mfvan.kernels.flow import FlowParams, dense_flow


# Stated bounds (EPE over the interior): under 0.09 px for sub-pixel motion (what a
# micro-expression is), 0.12 px at 1.5 px (the head's drift within half a second), 0.25 px
# at 3 px, beyond what the spotter meets (one warp per pyramid level is tuned for small
# motion; OpenCV's DIS does 0.10 to 0.11 px on all three).
@pytest.mark.parametrize(
    "shift, bound", [((0.3, -0.6), 0.09), ((-1.2, 0.8), 0.12), ((2.5, 1.5), 0.25)]
)
def test_flow_recovers_translations(face, shift, bound):
    matrix = np.float64([[1, 0, shift[0]], [0, 1, shift[1]]])
    flow = dense_flow(face, affine(face, matrix))
    error = np.linalg.norm(flow - truth_field(matrix, 128), axis=-1)[INTERIOR]
    assert error.mean() < bound, f"EPE {error.mean():.3f} px for a {shift} px translation"


# A rotation about the crop's centre moves the interior's corners by up to 1.1 px per
# degree. Its flat regions (cheeks, background) hold little texture to measure it by, so
# the bound is stated against OpenCV's DIS (medium) on the same pair: at most 1.5 times its
# EPE, and under 0.6 px at 2 degrees.
@pytest.mark.parametrize("degrees", [-1.0, 0.5, 2.0])
def test_flow_recovers_rotations(face, degrees):
    matrix = cv2.getRotationMatrix2D((63.5, 63.5), degrees, 1.0)
    moved = affine(face, matrix)
    truth = truth_field(matrix, 128)
    error = np.linalg.norm(dense_flow(face, moved) - truth, axis=-1)[INTERIOR].mean()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    reference = dis.calc(face.astype(np.uint8), np.clip(moved, 0, 255).astype(np.uint8), None)
    dis_error = np.linalg.norm(reference - truth, axis=-1)[INTERIOR].mean()
    assert error < 0.6 and error < 1.5 * dis_error, (error, dis_error)


def test_flow_matches_opencv_and_the_true_flow_on_synthme():
    from mfvan.deploy.bench.flow import face_mask, flow_methods, synth_flow_pairs

    pairs = synth_flow_pairs(8, 128)
    mask = face_mask(128)
    methods = flow_methods()
    epe = {name: [] for name in methods}
    gap_to_dis = []
    for a, b, truth in pairs:
        flows = {name: fn(a, b) for name, fn in methods.items()}
        for name, f in flows.items():
            epe[name].append(np.linalg.norm(f - truth, axis=-1)[mask].mean())
        gap = flows["mfvan (Numba)"] - flows["OpenCV DIS medium"]
        gap_to_dis.append(np.linalg.norm(gap, axis=-1)[mask].mean())
    ours = np.mean(epe["mfvan (Numba)"])
    # stated bounds: no worse than Farneback (the floor), far better than no flow,
    # and within 0.1 px of DIS on average
    assert ours <= np.mean(epe["OpenCV Farneback"]), epe
    assert ours < 0.5 * np.mean(epe["zero flow"]), epe
    assert np.mean(gap_to_dis) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("codec", [None, "h264-crf23"])
def test_flow_is_as_accurate_as_opencv_dis_on_photographic_faces(codec):
    """Real skin texture (the photograph), lossless and through a camera's H.264: our flow's
    error on the face is at most DIS medium's on the same pairs."""
    from mfvan.deploy.bench.flow import face_mask, flow_methods, synth_flow_pairs

    pairs = synth_flow_pairs(10, 128, config="photo", codec=codec)
    mask = face_mask(128)
    methods = flow_methods()
    epe = {
        name: np.mean(
            [np.linalg.norm(methods[name](a, b) - t, axis=-1)[mask].mean() for a, b, t in pairs]
        )
        for name in ("mfvan (Numba)", "OpenCV DIS medium", "zero flow")
    }
    assert epe["mfvan (Numba)"] <= epe["OpenCV DIS medium"], epe
    assert epe["mfvan (Numba)"] < 0.5 * epe["zero flow"], epe


def test_flow_checks_its_inputs():
    with pytest.raises(ValueError, match="one shape"):
        dense_flow(np.zeros((32, 32)), np.zeros((32, 30)))
    with pytest.raises(ValueError, match="at least 8"):
        dense_flow(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="out of range"):
        FlowParams(levels=0)


GPU_FLOW_CHECK = """
import cv2, numpy as np
from mfvan.kernels.flow import FlowParams, dense_flow
from mfvan.kernels.flow_cuda import dense_flow_batch
rng = np.random.default_rng(0)
base = [cv2.GaussianBlur(rng.random((32, 32)) * 255, (0, 0), 2) for _ in range(2)]
moves = [np.float32([[1, 0, 0.7], [0, 1, -0.4]]), np.float32([[1, 0.02, -0.5], [0, 1, 0.3]])]
first = np.stack(base).astype(np.uint8)
second = np.stack([cv2.warpAffine(b, m, (32, 32), borderMode=cv2.BORDER_REFLECT)
                   for b, m in zip(base, moves)]).astype(np.uint8)
for params in (FlowParams(), FlowParams(levels=2, iterations=2, gain=False, highpass=0)):
    gpu = dense_flow_batch(first, second, params)
    cpu = np.stack([dense_flow(a, b, params) for a, b in zip(first, second)])
    assert gpu.shape == (2, 32, 32, 2) and gpu.dtype == np.float32
    assert np.abs(cpu).mean() > 0.1, "the pairs move"
    print(float(np.abs(gpu - cpu).max()))
"""


@pytest.mark.slow
def test_the_batched_gpu_flow_is_the_cpu_kernels_flow_under_the_cuda_simulator():
    """`mfvan.kernels.flow_cuda` on a batch of two pairs, run by Numba's CUDA simulator
    (the same kernels, each thread in Python), against the CPU kernel pair by pair: within
    1e-4 px (measured: about 1e-5; float32 rounding in the running sums and FMAs)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", GPU_FLOW_CHECK],
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    diffs = [float(x) for x in done.stdout.split()]
    assert len(diffs) == 2 and max(diffs) < 1e-4, diffs


def _numba_gpu() -> bool:
    from mfvan.kernels.flow_cuda import available

    return available() and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"


@pytest.mark.gpu
@pytest.mark.skipif(not _numba_gpu(), reason="no CUDA device visible to Numba here")
def test_the_batched_gpu_flow_is_the_cpu_kernels_flow_on_a_gpu(face):
    """On a real GPU, 16 streams' 128 px crops at once: each pair's flow within 1e-3 px
    of the CPU kernel's."""
    from mfvan.kernels.flow_cuda import dense_flow_batch

    shifts = [(0.1 * i - 0.8, 0.05 * i - 0.4) for i in range(16)]
    first = np.stack([face] * 16)
    second = np.stack(
        [
            cv2.warpAffine(face, np.float32([[1, 0, dx], [0, 1, dy]]), face.shape[::-1])
            for dx, dy in shifts
        ]
    )
    gpu = dense_flow_batch(first, second)
    cpu = np.stack([dense_flow(a, b) for a, b in zip(first, second, strict=True)])
    assert np.abs(gpu - cpu).max() < 1e-3


def test_flow_device_cuda_without_a_gpu_falls_back_to_the_cpu_kernel_and_says_so(caplog):
    import argparse
    import logging

    from mfvan.deploy.runtime.stage import flow_device
    from mfvan.kernels.flow_cuda import available

    if available():
        pytest.skip("a CUDA device (or the simulator) is visible: nothing falls back")
    with caplog.at_level(logging.WARNING):
        assert flow_device(argparse.Namespace(flow_device="cuda")) == "cpu"
    assert "Numba sees no CUDA device: the CPU kernel runs" in caplog.text
    assert flow_device(argparse.Namespace(flow_device="cpu")) == "cpu"
