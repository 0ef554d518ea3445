"""mfvan.kernels: Numba kernels (dense optical flow, spotting signals) and face tracking.

Imports nothing of this project.
"""
