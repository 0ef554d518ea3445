"""A face crop moved by a known affine warp, and the flow field that warp is: the truth the
flow and rigid-motion tests compare with."""

import cv2
import numpy as np


def affine(img, matrix):
    return cv2.warpAffine(
        img, matrix, img.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )


def truth_field(matrix, size):
    """d(x) with second(x + d(x)) = first(x) when second = warpAffine(first, matrix)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx = matrix[0, 0] * xx + matrix[0, 1] * yy + matrix[0, 2] - xx
    dy = matrix[1, 0] * xx + matrix[1, 1] * yy + matrix[1, 2] - yy
    return np.dstack([dx, dy])


INTERIOR = (slice(20, 108), slice(20, 108))  # away from borders the warp had to invent
