"""`mfvan reproduce`: LOSO of MFVAN, its ablations and the baselines on SynthME, the
shipped weights and docs/results.md (the experiment: `mfvan.model.reproduce`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "LOSO of MFVAN, its ablations and baselines on SynthME; docs/results.md"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        default=Path("data/synthme-standard"),
        help="SynthME standard (generated there when missing)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="run folders")
    p.add_argument("--docs", type=Path, default=Path("docs/results.md"), help="results page")
    p.add_argument("--workers", type=int, default=2, help="variants trained in parallel")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="main-phase epochs (default: the demo preset's); for smoke runs",
    )
    p.add_argument(
        "--matrix",
        type=Path,
        default=Path("runs/spotting/matrix"),
        help="the realistic sets of `mfvan spot-eval --sweep`: their seed-0 cells also train "
        "the shipped weights, their held-out seed-1 cells are scored for STRS (skipped "
        "when absent)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        help="run only these rows (names as in docs/results.md), or 'core': the shipped "
        "network, MFVAN without motion and the flow baseline (default: all; several hours "
        "on 2 cores)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="where to write the demo weights (default: OUT/weights/, never into the "
        "installed package; give deploy/weights/mfvan-demo-synthme.safetensors to update the "
        "shipped ones, as `make reproduce` does)",
    )


def run(args: argparse.Namespace) -> int:
    from mfvan.deploy.bench import cpu_name
    from mfvan.deploy.inference.backends import load_recognizer
    from mfvan.deploy.shipped import DEMO_WEIGHTS
    from mfvan.model.reproduce import CORE, VARIANTS, Reproduction, reproduce

    names = [v[0] for v in VARIANTS]
    unknown = [v for v in args.variants or () if v not in (*names, "core")]
    if unknown:
        print(
            f"mfvan reproduce: unknown variant(s) {unknown}; choose from {names}", file=sys.stderr
        )
        return 2

    weights = args.weights or args.out / "weights" / DEMO_WEIGHTS.name
    job = Reproduction(
        args.data,
        args.out,
        args.docs,
        weights,
        cpu_name(),
        args.workers,
        args.epochs,
        args.matrix,
        load_recognizer,
        tuple(CORE) if args.variants == ["core"] else args.variants,
    )
    reproduce(job)
    return 0
