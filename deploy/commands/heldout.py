"""`mfvan heldout`: recognition on faces it has never seen. Builds the held-out-identity
sets (morphs of held-out portraits, and the tuning sets of training portraits), trains the
region-motion recognizer with its veto class on the tuning sets' spotted pairs, and scores
any weights on the held-out cells (before and after the veto), as docs/results.md reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from mfvan.deploy.runtime import stage

HELP = "held-out identities: build the sets, train the veto recognizer, score weights"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, default=Path("runs/heldout"), help="sets, caches and results"
    )
    p.add_argument(
        "--train",
        type=Path,
        metavar="WEIGHTS",
        help="train the region-motion recognizer with its 'none' veto class on the tuning "
        "sets' spotted pairs, calibrated on them (cross-fitted), and write it here",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="also train the other recognizers (OFF-ApexNet and MFVAN on the spot stage's "
        "motion) exactly as the shipped one, with its classes and calibration, under "
        "OUT/models (kept), and score them beside it",
    )
    p.add_argument(
        "--evaluate",
        type=Path,
        action="append",
        metavar="WEIGHTS",
        help="score these weights on every held-out cell (repeatable; default: the shipped "
        "ones and, with --train, the trained ones)",
    )
    p.add_argument(
        "--min-confidence",
        type=stage.fraction,
        default=0.0,
        help="as `mfvan recognize --min-confidence`, for the 'after' columns (default: 0)",
    )
    p.add_argument(
        "--veto-fixture",
        type=Path,
        metavar="NPZ",
        help="write the veto test's pairs (the first blinks, key-frame pulses and "
        "micro-expressions spotted in the held-out H.264 CRF 23 cells) here, as "
        "tests/data/veto-pairs.npz was made",
    )
    p.add_argument("--docs", type=Path, help="write the held-out section of this Markdown page")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")


def run(args: argparse.Namespace) -> int:
    from mfvan.deploy.inference.backends import load_recognizer
    from mfvan.deploy.shipped import DEMO_WEIGHTS, VETO_WEIGHTS
    from mfvan.model import heldout
    from mfvan.model.weights import WeightsError

    started = time.time()
    for seed in (heldout.HELD_OUT_SEED, heldout.TUNING_SEED):
        heldout.build(args.out, seed, args.workers)
    cache = args.out / "cache"
    if args.veto_fixture:
        print(f"fixture: {heldout.write_veto_fixture(args.out, args.veto_fixture, cache)}")
    if args.train:
        heldout.train_shipped(args.out, args.train, cache, args.workers)
        print(f"weights: {args.train}")
    weights = args.evaluate or [DEMO_WEIGHTS, args.train or VETO_WEIGHTS]
    if args.compare:
        for kind in heldout.RECOGNIZERS[1:]:  # the first is the shipped one
            path = args.out / "models" / f"{kind}-veto-synthme.safetensors"
            if not path.exists():
                print(f"training {kind} on the tuning identities' spotted pairs ...")
                heldout.train_shipped(args.out, path, cache, args.workers, kind=kind)
            weights.append(path)
    results = {}
    for path in weights:
        try:
            classify, meta = load_recognizer(path, "onnxruntime")
        except WeightsError as e:
            print(f"mfvan heldout: {e}", file=sys.stderr)
            return 2
        cells = heldout.evaluate(
            args.out, classify, meta["classes"], cache, args.min_confidence, args.workers
        )
        results[str(path)] = {"version": meta["version"], "classes": meta["classes"], **cells}
        print(heldout.format_results(meta["version"], cells))
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.docs:
        from mfvan.deploy.bench import cpu_name

        took = f"{time.time() - started:.0f} s"
        machine = f"{cpu_name()}, {os.cpu_count()} cores"
        heldout.write_docs(results, args.docs, took, machine)
        print(f"results: {args.docs}")
    return 0
