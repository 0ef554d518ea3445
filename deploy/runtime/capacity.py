"""What a run's plan asks of the machine, against what the machine has: `mfvan run`
refuses, in one line at start, a plan it cannot hold (200 cameras on 2 cores made 401
processes, started 110 of them, loaded the box to 47 and never became ready), unless told
to go on anyway (`--overcommit`).

The costs are this project's measurements (docs/benchmarks.md, docs/deploy.md "Sizing"):
a stage process holds about 300 MB resident (ingest 250 MB, spot 285 MB); a 200 fps H.264
camera takes about one core to decode and one to spot, and the cost grows with the frame
rate. A camera whose rate is not known before it is opened (RTSP, a file) is taken to be
30 fps. Frames a busy spot stage cannot take are dropped and counted, so cores may be
overbooked up to `CORE_OVERBOOK` times before the plan is refused.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass

PROCESS_MB = 300  # resident memory of one stage process
FRAMES_PER_CORE_S = 200.0  # frames a second one core decodes, or spots
ASSUMED_FPS = 30.0  # a camera whose rate is not known before it is opened
CORE_OVERBOOK = 2.0  # frames beyond the cores are dropped and counted: up to 2x is a choice
FDS_PER_CHILD = 8  # the supervisor's pipes to a child and its share of sockets
FDS_SPARE = 64


@dataclass(frozen=True)
class Needs:
    processes: int
    memory_mb: float
    cores: float
    fds: int


def needs(children, fps: list[float]) -> Needs:
    """What `children` (the plan) ask for, the cameras running at `fps` each."""
    cores = sum(2 * f / FRAMES_PER_CORE_S for f in fps)  # decode and spot
    n = len(children)
    return Needs(n, n * PROCESS_MB, cores, n * FDS_PER_CHILD + FDS_SPARE)


def available_mb() -> float:
    """Memory available to new processes (MemAvailable), in MB; inf when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.inf


def refusal(need: Needs, cores: int | None = None, memory_mb: float | None = None) -> str | None:
    """Why this machine cannot hold `need`, in one line, or None."""
    cores = cores or os.cpu_count() or 1
    memory_mb = available_mb() if memory_mb is None else memory_mb
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    short = []
    if need.cores > CORE_OVERBOOK * cores:
        short.append(f"{need.cores:.1f} cores of work on {cores}")
    if need.memory_mb > memory_mb:
        short.append(f"{need.memory_mb / 1024:.1f} GB for {memory_mb / 1024:.1f} GB available")
    if fds != resource.RLIM_INFINITY and need.fds > fds:
        short.append(f"{need.fds} file descriptors for a limit of {fds} (ulimit -n)")
    if not short:
        return None
    return (
        f"{need.processes} processes would need {'; '.join(short)}: run fewer cameras "
        "here (or more per spot process, --streams-per-spot), or go on with --overcommit"
    )
