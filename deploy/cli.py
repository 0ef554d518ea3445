"""The `mfvan` command: one console script, one subcommand per task.

Each subcommand is a function taking the parsed arguments, registered in `SUBCOMMANDS`
with the function that adds its flags. Heavy imports happen inside the subcommand, so
`mfvan --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _add_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        choices=("standard", "tiny"),
        default="standard",
        help="preset: 'standard' is the benchmark's fixed set, 'tiny' is for tests "
        "(default: %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--subjects",
        type=int,
        default=None,
        help="number of subjects (default: the preset's, 16 standard / 3 tiny)",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate, 25 or more (default: the preset's, 200)",
    )
    p.add_argument(
        "--codec",
        choices=("ffv1", "h264"),
        default=None,
        help="long videos: lossless FFV1 in .mkv or H.264 in .mp4 (default: ffv1)",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also write preview/<emotion>.png: onset, apex, magnified difference",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per core)"
    )


def _run_synth(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mfvan.model.data import synth

    config = synth.CONFIGS[args.config]
    overrides = {
        k: v
        for k, v in (("subjects", args.subjects), ("fps", args.fps), ("codec", args.codec))
        if v is not None
    }
    try:
        config = replace(config, **overrides)
    except ValueError as err:
        print(f"mfvan synth: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    manifest = synth.generate(
        config, args.out, seed=args.seed, preview=args.preview, workers=args.workers
    )
    elapsed = time.perf_counter() - started
    print(f"SynthME '{config.name}' (seed {args.seed}) written to {args.out} in {elapsed:.1f} s")
    print(
        f"  clips:       {manifest['clips']} in {args.out / 'clips'} (CASME II layout), "
        f"{_megabytes(args.out / 'clips')} MB"
    )
    print(
        f"  long videos: {manifest['long_videos']} in {args.out / 'long'} "
        f"({manifest['long_expressions']['micro']} micro, "
        f"{manifest['long_expressions']['macro']} macro), {_megabytes(args.out / 'long')} MB"
    )
    if args.preview:
        print(f"  previews:    {args.out / 'preview'}/<emotion>.png and subjects.png")
    return 0


def _megabytes(folder: Path) -> int:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6)


def _add_bench(p: argparse.ArgumentParser) -> None:
    what = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    model = what.add_parser(
        "model",
        help="MFVAN's parameters, FLOPs and latency: eager torch and ONNX Runtime side by side",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model.add_argument(
        "--config", choices=("tiny", "demo", "paper"), default="demo", help="network config"
    )
    model.add_argument("--runs", type=int, default=200, help="timed runs per engine and batch")
    model.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")


def _run_bench(args: argparse.Namespace) -> int:
    from mfvan.deploy.bench import bench_model, format_model_report

    print(format_model_report(bench_model(args.config, batches=args.batches, runs=args.runs)))
    return 0


SUBCOMMANDS = {
    "synth": ("generate SynthME, the synthetic micro-expression set", _add_synth, _run_synth),
    "bench": ("measure speed, side by side with a reference", _add_bench, _run_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfvan",
        description="Real-time micro-expression recognition: spot, classify, publish.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_flags, _) in SUBCOMMANDS.items():
        add_flags(
            sub.add_parser(
                name,
                help=help_text,
                description=help_text,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            )
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return SUBCOMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
