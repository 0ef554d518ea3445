"""`mfvan train`: MFVAN or a baseline on a dataset; `--loso` evaluates
leave-one-subject-out, else the weights are saved. One process, or one per rank under
`torchrun --nproc-per-node N` (`mfvan.model.pipeline.distributed`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "train MFVAN or a baseline; --loso evaluates leave-one-subject-out"


def add(p: argparse.ArgumentParser) -> None:
    from mfvan.model.data.datasets import LOADERS

    p.add_argument(
        "--dataset",
        required=True,
        choices=tuple(LOADERS),
        help="which dataset's layout --data holds",
    )
    p.add_argument("--data", type=Path, required=True, help="the dataset's root folder")
    p.add_argument(
        "--config",
        choices=("tiny", "demo", "motion", "paper"),
        default="demo",
        help="network config (and its training preset); motion: demo with the spot stage's "
        "onset-to-apex flow as an input (what ships)",
    )
    p.add_argument(
        "--model",
        choices=("mfvan", "off-apexnet", "apex-cnn", "region-motion"),
        default="mfvan",
        help="MFVAN or a baseline (region-motion: a small classifier on the spot stage's "
        "per-region motion alone, with its own training recipe)",
    )
    p.add_argument(
        "--ablation",
        default="full",
        choices=("full", "global", "global+ri", "global+ri+image", "global+ri+s1", "global+ri+s2"),
        help="MFVAN's Table 3 row",
    )
    p.add_argument(
        "--labels",
        choices=("native", "3class"),
        default="3class",
        help="the dataset's own classes or negative/positive/surprise (MEGC 2019)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run folder: folds, checkpoints, report (rerun to resume)",
    )
    p.add_argument(
        "--loso",
        action="store_true",
        help="leave-one-subject-out evaluation (else: train on all data, save weights)",
    )
    p.add_argument(
        "--jitter",
        type=int,
        default=5,
        metavar="FRAMES",
        help="also train on each sample with its onset and apex moved by up to this many "
        "frames, as the live spotter finds them, and report LOSO on those too (0: off)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="RUN",
        help="a LOSO run folder of the same model: its held-out predictions' temperature "
        "goes into the weights' sidecar (the events' confidence is calibrated with it)",
    )
    p.add_argument("--epochs", type=int, default=None, help="main-phase epochs (default: preset)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(".cache/pairs"),
        help="where aligned face crops are cached",
    )
    p.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="micro-batches per batch, gradients averaged (in one process, what torchrun "
        "--nproc-per-node N does with N)",
    )


def run(args: argparse.Namespace) -> int:
    """In one process, or under `torchrun --nproc-per-node N` (then
    DistributedDataParallel: gloo on CPU, NCCL on CUDA; rank 0 writes the outputs)."""
    import os

    from mfvan.model.pipeline import distributed

    if args.loso and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(
            "mfvan train: --loso under torchrun is not supported; run folds as separate "
            "processes (one `mfvan train --loso` per machine)",
            file=sys.stderr,
        )
        return 2
    with distributed(args.device) as device:
        args.device = device
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mfvan.model import pipeline
    from mfvan.model.data.datasets import DatasetError
    from mfvan.model.evaluate import write_report
    from mfvan.model.train import run_loso, train_preset

    if args.accumulate < 1:
        print("mfvan train: --accumulate must be at least 1", file=sys.stderr)
        return 2
    try:
        data, cfg = pipeline.load(args.dataset, args.data, args.labels, args.config)
    except (DatasetError, FileNotFoundError) as err:
        print(f"mfvan train: {err}", file=sys.stderr)
        return 2
    if args.model == "region-motion" and cfg.motion == "none":
        print(
            f"mfvan train: region-motion reads the spot stage's motion, which config "
            f"{args.config!r} does not compute; use --config motion",
            file=sys.stderr,
        )
        return 2
    for note in data.notes:
        print(f"note: {note}")
    print(
        f"{data.name}: {len(data.samples)} samples, {len(data.subjects)} subjects, {data.counts()}"
    )
    tcfg = replace(
        train_preset(args.model, args.config),
        seed=args.seed,
        device=args.device,
        accumulate=args.accumulate,
    )
    if args.epochs is not None:
        tcfg = replace(tcfg, epochs=args.epochs)
    from mfvan.model.data.pairs import Jitter

    jitter = Jitter(frames=args.jitter) if args.jitter > 0 else None
    pairs = pipeline.crop(data, cfg, args.cache, progress=True, jitter=jitter)
    print(f"faces found on {pairs.found.mean():.1%} of onset frames (others centre-cropped)")
    if args.loso:
        run_loso(args.model, cfg, pairs, tcfg, args.out, args.ablation)
        _print_summary(write_report(args.out))
        print(f"report: {args.out / 'report.md'}")
        return 0
    return _save(args, pipeline.Prepared(data, cfg, pairs), tcfg)


def _print_summary(summary: dict) -> None:
    """A LOSO run's pooled scores, at a spotter's pairs, and its calibration."""
    p = summary["pooled"]
    print(f"LOSO pooled: accuracy {p['accuracy']:.4f}  UF1 {p['uf1']:.4f}  UAR {p['uar']:.4f}")
    if summary["spotted"]:
        s = summary["spotted"]
        print(
            f"at a spotter's (onset, apex): accuracy {s['accuracy']:.4f}  UF1 "
            f"{s['uf1']:.4f}  UAR {s['uar']:.4f}"
        )
    if summary["calibration"]:
        c = summary["calibration"]
        print(
            f"calibration: temperature {c['temperature']:.3f}, ECE {c['ece_before']:.4f} "
            f"-> {c['ece_after']:.4f}"
        )


def _save(args: argparse.Namespace, prepared, tcfg) -> int:
    """Train on every sample and save the weights the recognizer serves (with the
    calibration of an earlier --loso run, `--calibration`)."""
    from mfvan.model import pipeline
    from mfvan.model.train import served_config

    data, cfg = prepared.dataset, prepared.cfg

    served = served_config(args.model, cfg)
    if served is None or served.motion != cfg.motion:
        print(
            "mfvan train: only networks the recognizer serves can be saved (MFVAN; "
            "region-motion and off-apexnet with --config motion); use --loso for the others",
            file=sys.stderr,
        )
        return 2
    calibration = None
    if args.calibration is not None:
        metrics = args.calibration / "metrics.json"
        if not metrics.exists():
            print(f"mfvan train: {metrics} does not exist (run --loso first)", file=sys.stderr)
            return 2
        calibration = json.loads(metrics.read_text()).get("calibration")
        if calibration is None:
            print(f"mfvan train: {metrics} has no calibration", file=sys.stderr)
            return 2
        fitted_on = f"LOSO held-out predictions of {args.calibration}"
        calibration = {**calibration, "fitted_on": fitted_on}
    run = pipeline.WeightsRun(
        args.out / f"mfvan-{args.config}-{args.dataset}.safetensors",
        training_data=f"{args.dataset} ({args.labels}) at {args.data}, "
        f"{len(data.samples)} samples, seed {args.seed}",
        seed=args.seed,  # the initial weights, as `mfvan reproduce` draws them
        model_kind=args.model,
        ablation=args.ablation,
        checkpoint=args.out / "checkpoint.pt",
        progress=True,
        calibration=calibration,
    )
    weights = pipeline.train_weights(prepared, tcfg, run)
    if weights is not None:  # rank 0
        print(f"weights: {weights} (+ {weights.with_suffix('.json').name})")
    return 0
