"""`mfvan spot-eval`: spot micro-expressions in long videos, classify each spotted interval
with the recognizer as the live pipeline does, and score both (MEGC spotting, and
spot-then-recognize: STRS); or `--sweep` the realistic-mode matrix (spotting)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mfvan.deploy.runtime import stage

HELP = "spot and recognize micro-expressions in long videos; score them (MEGC, STRS)"


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
    p.add_argument(
        "--weights",
        type=Path,
        help="the recognizer's weights for STRS (default: the shipped ones)",
    )
    p.add_argument(
        "--backend",
        default="onnxruntime",
        help="the recognizer's backend, as `mfvan recognize --backend` (default: onnxruntime)",
    )
    p.add_argument(
        "--no-recognize",
        action="store_true",
        help="score spotting only (no recognizer, no STRS)",
    )
    stage.add_measure_hz(p)
    p.add_argument(
        "--scenes",
        action="store_true",
        help="several faces per camera: SynthME scenes (two faces side by side, one entering "
        "and leaving, two crossing and a third still) on held-out seeds and portraits, H.264 "
        "CRF 23, scored per face against the same faces rendered alone, with identity "
        "switches (minutes on 2 cores at 30 fps)",
    )
    p.add_argument(
        "--scene-fps",
        type=float,
        nargs="+",
        default=[30.0],
        metavar="FPS",
        help="with --scenes: the frame rates (default 30)",
    )
    p.add_argument(
        "--gestures",
        action="store_true",
        help="what head turns and hands over the mouth cost: 4 photographic faces at 30 fps "
        "spotted with the realistic mode's gestures, with them and the spotter's noise hold "
        "on, and without them (about 5 minutes on 2 cores)",
    )
    p.add_argument(
        "--gesture-seconds",
        type=float,
        default=40.0,
        help="with --gestures: seconds of each face (default 40)",
    )
    p.add_argument("--quick", action="store_true", help="with --sweep: the headline cells only")
    p.add_argument(
        "--compare",
        action="append",
        metavar="NAME=VALUE",
        help="with --sweep: also evaluate the headline cells with this spotter parameter "
        "changed (e.g. gop_bridge=true: key frames bridged, off as shipped), and show both "
        "side by side (repeatable)",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.add_argument(
        "--docs", type=Path, help="with --sweep or --scenes: write the results as a Markdown page"
    )


class RecognizerError(ValueError):
    """Weights or a backend spot-eval cannot use; the message is one line."""


def _classifier(args: argparse.Namespace):
    """The live recognizer's `Classifier`, as `mfvan recognize` loads it."""
    from mfvan.deploy.inference.backends import NAMES, BackendUnavailable
    from mfvan.model.weights import WeightsError

    if args.backend not in NAMES:
        raise RecognizerError(f"unknown backend {args.backend!r}; choose from {NAMES}")
    try:
        return stage.load_classifier(args)[0]
    except (WeightsError, BackendUnavailable) as e:
        raise RecognizerError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from mfvan.model import spotting

    if args.data is None and not args.sweep and not args.scenes and not args.gestures:
        print("mfvan spot-eval: give --data DIR, --sweep, --scenes or --gestures", file=sys.stderr)
        return 2
    if args.scenes:
        return _scenes(args)
    if args.gestures:
        return _gestures(args)
    if args.sweep and args.measure_hz is not None:
        print(
            "mfvan spot-eval: --measure-hz is for --data (the sweep's cells are kept with the "
            "spotter's defaults)",
            file=sys.stderr,
        )
        return 2
    if args.data is not None:
        try:
            spotting.check_layout(args.data)
            classifier = None if args.no_recognize else _classifier(args)
            result = spotting.evaluate(
                args.data,
                args.out,
                params=stage.spotter_params(args),
                workers=args.workers,
                recognizer=classifier and (classifier.backend, classifier.classes),
            )
        except (spotting.LayoutError, RecognizerError) as e:
            print(f"mfvan spot-eval: {e}", file=sys.stderr)
            return 2
        print(spotting.format_score(result))
        if "str" in result:
            print(f"recognizer: {classifier.version} ({classifier.backend.name})")
            print(spotting.format_chain(result["str"]))
        print(f"traces and intervals: {args.out}")
    if args.sweep:
        from mfvan.model import spotting_matrix as matrix

        root = args.out / "matrix"
        try:
            compare = dict(matrix.parse_change(c) for c in args.compare or ())
            results = matrix.sweep(
                root, quick=args.quick, workers=args.workers, compare=compare or None
            )
        except (matrix.StaleMatrix, ValueError) as e:
            print(f"mfvan spot-eval: {e}", file=sys.stderr)
            return 2
        earlier = matrix.legacy(root, workers=args.workers)
        if args.docs:
            from mfvan.deploy.bench import cpu_name

            command = "mfvan spot-eval --sweep" + (" --quick" if args.quick else "")
            command += "".join(f" --compare {c}" for c in args.compare or ())
            command += f" --docs {args.docs}"
            path = matrix.write_docs(
                results, earlier, args.docs, command, cpu_name(), compare=compare or None
            )
            print(f"results: {path}")
    return 0


def _gestures(args: argparse.Namespace) -> int:
    """`--gestures`: what head turns and hands cost the spotter (`mfvan.model.gesture_eval`)."""
    from mfvan.model import gesture_eval

    rows = gesture_eval.evaluate(args.gesture_seconds, workers=args.workers)
    print(gesture_eval.format_rows(rows, args.gesture_seconds))
    return 0


def _scenes(args: argparse.Namespace) -> int:
    """`--scenes`: per-face spotting on multi-face scenes (`mfvan.model.scene_eval`)."""
    from mfvan.deploy.bench import cpu_name
    from mfvan.model import scene_eval

    rows = scene_eval.evaluate(fps_list=tuple(args.scene_fps))
    table = scene_eval.format_rows(rows)
    print(table)
    if args.docs:
        rates = " ".join(f"{f:g}" for f in args.scene_fps)
        command = f"mfvan spot-eval --scenes --scene-fps {rates} --docs {args.docs}"
        scene_eval.write_docs(rows, args.docs, command, cpu_name())
        print(f"results: {args.docs}")
    return 0
