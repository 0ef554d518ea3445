"""`mfvan bench`: speed measured side by side with a reference, never asserted in tests.

One module per target: `model` (MFVAN, eager PyTorch beside ONNX Runtime), `flow` (our
dense flow beside OpenCV's), `spotter` (the spotter per frame, our flow beside OpenCV's),
`backends` (every inference backend as the recognizer calls it), `pipeline` (transport
and `mfvan run` end to end). Each has `bench_*` (a dict of figures) and `format_*_report`.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    """The CPU's model name, to name the machine a figure came from."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of timings in seconds, in ms."""
    arr = np.asarray(samples) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))
