"""mfvan.kernels: Numba kernels (dense optical flow, spotting signals), face tracking, and
the online spotter; `facespot.FaceSpotter` is the one path frame -> crop -> spots that the
live stage, `mfvan spot-eval` and `mfvan bench spotter` share.

Imports nothing of this project (tests/test_layout.py checks it).
"""
