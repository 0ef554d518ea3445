"""`mfvan warm-up`: compile the spot stage's Numba kernels into the on-disk cache now, so
that the first `mfvan run` (or `mfvan spot`) after an install starts in seconds instead of
compiling first. `make demo`, the Dockerfiles and the systemd unit run it once, and `mfvan
run` runs it beside the recognizer's loading before it starts any spot process (so that N
spot processes do not each compile the same kernels). Running it again costs a second or
two (everything loads from the cache) and changes nothing.

With `--jobs 2` (the default on a machine with two cores or more) a first compile is
shared by two processes, the dense flow in one and the rest in the other
(`kernels.spotter.PARTS`); this process then loads both halves from the cache."""

from __future__ import annotations

import argparse
import os

HELP = "compile the spot stage's kernels into the cache, so later starts are quick"


def add(p: argparse.ArgumentParser) -> None:
    from mfvan.deploy.runtime.stage import positive

    p.add_argument(
        "--jobs",
        type=positive(int),
        default=min(2, os.cpu_count() or 1),
        help="2 or more: a first compile shared by two processes (the flow in one, the rest "
        "in the other); 1: all in this one",
    )
    p.add_argument("--part", choices=("flow", "signals"), help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    import subprocess
    import sys
    import time

    from mfvan.kernels import spotter

    start = time.perf_counter()
    if args.part:  # one half, in a helper process of the command below
        spotter.warm_up(part=args.part)
        return 0
    helper = None
    if args.jobs > 1 and not _cached():
        helper = subprocess.Popen(
            [sys.executable, "-m", "mfvan.deploy.cli", "warm-up", "--part", "flow"]
        )
        spotter.warm_up(part="signals")
        if helper.wait() != 0:
            print("mfvan warm-up: the helper process failed; compiling here", file=sys.stderr)
    spotter.warm_up()
    state = spotter.compiled()
    seconds = time.perf_counter() - start
    if state["compiled"] or helper is not None:
        where = " in 2 processes" if helper is not None else ""
        done = f"compiled the spot stage's kernels{where}"
    else:
        done = "nothing to compile"
    print(
        f"mfvan warm-up: {done}, {state['loaded']} signatures loaded from the cache, in "
        f"{seconds:.1f} s (cache: {state['cache']})"
    )
    return 0


def _cached() -> bool:
    """Whether the dense flow, the largest kernel, is in Numba's cache for this CPU already
    (then a helper process would cost more than it saves). Read from the cache's index
    through Numba's internals; anything unexpected there means "not cached"."""
    from mfvan.kernels import flow

    try:
        dispatcher = flow._flow
        index = dispatcher._cache._cache_file._load_index()  # {} when the source changed
        magic = dispatcher.targetctx.codegen().magic_tuple()  # this CPU's name and features
        return any(key[1] == magic for key in index)
    except Exception:  # noqa: BLE001 (a Numba without these internals: just compile)
        return False
