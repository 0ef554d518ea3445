"""`mfvan warm-up`: compile the spot stage's Numba kernels into the on-disk cache now, so
that the first `mfvan run` (or `mfvan spot`) after an install starts in seconds instead of
compiling first. `make demo`, the Dockerfiles and the systemd unit run it once; running it
again costs a second or two (everything loads from the cache) and changes nothing."""

from __future__ import annotations

import argparse

HELP = "compile the spot stage's kernels into the cache, so later starts are quick"


def add(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    import time

    from mfvan.kernels import spotter

    start = time.perf_counter()
    spotter.warm_up()
    state = spotter.compiled()
    seconds = time.perf_counter() - start
    done = (
        f"compiled {state['compiled']} kernel signatures"
        if state["compiled"]
        else "nothing to compile"
    )
    print(
        f"mfvan warm-up: {done}, {state['loaded']} loaded from the cache, in {seconds:.1f} s "
        f"(cache: {state['cache']})"
    )
    return 0
