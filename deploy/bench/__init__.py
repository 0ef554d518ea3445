"""`mfvan bench`: speed measured side by side with a reference, never asserted in tests.

One module per target: `model` (MFVAN, eager PyTorch beside ONNX Runtime), `flow` (our
dense flow beside OpenCV's), `spotter` (the spotter per frame, our flow beside OpenCV's),
`backends` (every inference backend as the recognizer calls it), `pipeline` (transport
and `mfvan run` end to end). Each has `bench_*` (a dict of figures) and `format_*_report`.
"""

from __future__ import annotations

import os
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


def stage_cpu(pid: int) -> dict[str, float]:
    """CPU seconds used so far by each stage process of `mfvan run` (pid), summed by
    stage (ingest, spot, recognize, and the rest: record, forward, web)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return used
    for child in children:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        stage = argv[argv.index(b"mfvan.deploy.cli") + 1].decode()
        used[stage] = used.get(stage, 0.0) + (int(stat[11]) + int(stat[12])) / tick
    return used
