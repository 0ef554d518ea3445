"""`mfvan spot-eval`: spot micro-expressions in long videos and score them (MEGC), or
`--sweep` the realistic-mode matrix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "spot micro-expressions in long videos and score them (MEGC protocol)"


def add(p: argparse.ArgumentParser) -> None:
    from mfvan.model.spotting import LAYOUT

    p.epilog = LAYOUT
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="a folder of long videos with ground_truth.csv (layout below); "
        "required unless --sweep",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/spotting"), help="report folder (traces, JSON)"
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="generate the realistic-mode matrix ({parametric, photo} x {FFV1, H.264 CRF "
        "18/23/28, H.265 CRF 23, camera CBR} x {200, 60, 30 fps}, held-out and tuning "
        "seeds) under OUT/matrix and evaluate every cell (sets and results are kept: "
        "delete OUT/matrix to redo; about an hour on 2 cores)",
    )
    p.add_argument("--quick", action="store_true", help="with --sweep: the headline cells only")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.add_argument("--docs", type=Path, help="with --sweep: write the results as a Markdown page")


def run(args: argparse.Namespace) -> int:
    from mfvan.model import spotting

    if args.data is None and not args.sweep:
        print("mfvan spot-eval: give --data DIR, or --sweep", file=sys.stderr)
        return 2
    if args.data is not None:
        try:
            result = spotting.evaluate(args.data, args.out, workers=args.workers)
        except spotting.LayoutError as e:
            print(f"mfvan spot-eval: {e}", file=sys.stderr)
            return 2
        print(spotting.format_score(result))
        print(f"traces and intervals: {args.out}")
    if args.sweep:
        from mfvan.model import spotting_matrix as matrix

        root = args.out / "matrix"
        results = matrix.sweep(root, quick=args.quick, workers=args.workers)
        earlier = matrix.legacy(root, workers=args.workers)
        if args.docs:
            from mfvan.deploy.bench import cpu_name

            command = "mfvan spot-eval --sweep" + (" --quick" if args.quick else "")
            command += f" --docs {args.docs}"
            path = matrix.write_docs(results, earlier, args.docs, command, cpu_name())
            print(f"results: {path}")
    return 0
