"""`mfvan synth`: generate SynthME, the synthetic micro-expression set."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "generate SynthME, the synthetic micro-expression set"


def add(p: argparse.ArgumentParser) -> None:
    from mfvan.model.data.synth import CONFIGS, ENCODINGS

    p.add_argument(
        "--config",
        choices=tuple(CONFIGS),
        default="standard",
        help="preset: 'standard' is the benchmark's fixed set, 'tiny' is for tests, "
        "'camera' and 'photo' are realistic mode (skin detail, camera noise, H.264; 'photo': "
        "photographic identities)",
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
        choices=tuple(ENCODINGS),
        default=None,
        help="long videos: lossless FFV1 in .mkv, or H.264 / H.265 in .mp4 (h264: CRF 12; "
        "h264-crfN, h265-crf23, h264-cbr: as a camera encodes, 1 s GOP, no B-frames) "
        "(default: the preset's)",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also write preview/<emotion>.png: onset, apex, magnified difference",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per core)"
    )


def run(args: argparse.Namespace) -> int:
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
