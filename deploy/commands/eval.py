"""`mfvan eval`: rebuild a LOSO run's report, or evaluate trained weights on a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "rebuild a LOSO run's report, or evaluate weights on a dataset"


def add(p: argparse.ArgumentParser) -> None:
    from mfvan.model.data.datasets import LOADERS

    p.add_argument(
        "run",
        type=Path,
        nargs="?",
        help="a run folder written by `mfvan train --loso`: rebuild its report",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="instead: evaluate these weights (.safetensors + sidecar) on --data",
    )
    p.add_argument(
        "--dataset",
        default="synthme",
        choices=tuple(LOADERS),
        help="with --weights: the dataset's layout",
    )
    p.add_argument("--data", type=Path, default=None, help="with --weights: the dataset's root")
    p.add_argument("--cache", type=Path, default=Path(".cache/pairs"), help="face crop cache")


def run(args: argparse.Namespace) -> int:
    from mfvan.model.evaluate import write_report

    if args.weights is not None:
        return _eval_weights(args)
    if args.run is None or not (args.run / "run.json").exists():
        print(
            f"mfvan eval: {args.run} is not a LOSO run folder (no run.json); "
            "or pass --weights and --data",
            file=sys.stderr,
        )
        return 2
    summary = write_report(args.run)
    p = summary["pooled"]
    print(f"{args.run}: accuracy {p['accuracy']:.4f}  UF1 {p['uf1']:.4f}  UAR {p['uar']:.4f}")
    return 0


def _eval_weights(args: argparse.Namespace) -> int:
    """Trained weights on every sample of a dataset whose classes are the weights' own."""
    from mfvan.model.data.datasets import CLASSES_3, DatasetError, load_dataset
    from mfvan.model.data.pairs import build_pairs
    from mfvan.model.evaluate import scores
    from mfvan.model.train import predict
    from mfvan.model.weights import WeightsError, load_weights

    try:
        model, meta = load_weights(args.weights)
        label_set = "3class" if tuple(meta["classes"]) == CLASSES_3 else "native"
        if args.data is None:
            raise DatasetError("--weights needs --data, the dataset to evaluate on")
        data = load_dataset(args.dataset, args.data, label_set)
    except (WeightsError, DatasetError, FileNotFoundError) as err:
        print(f"mfvan eval: {err}", file=sys.stderr)
        return 2
    if list(data.classes) != list(meta["classes"]):
        print(
            f"mfvan eval: the weights classify {meta['classes']}, {args.dataset} is labelled "
            f"{list(data.classes)}",
            file=sys.stderr,
        )
        return 2
    print(f"weights: {args.weights} (trained on: {meta['training_data']})")
    pairs = build_pairs(data, model.cfg.image_size, model.cfg.in_chans, args.cache)
    predicted = predict(model, pairs).argmax(-1)
    s = scores(pairs.labels, predicted, len(data.classes))
    print(
        f"{data.name}: {s['n']} samples, accuracy {s['accuracy']:.4f}  UF1 {s['uf1']:.4f}  "
        f"UAR {s['uar']:.4f}"
    )
    shown = zip(pairs.subjects, pairs.names, pairs.labels, predicted, strict=True)
    for subject, name, label, guess in list(shown)[:10]:
        print(
            f"  {subject}/{name:<12} true {data.classes[label]:<9} predicted {data.classes[guess]}"
        )
    return 0
