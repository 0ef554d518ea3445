"""`mfvan analyze`: the live pipeline's tracker, spotter and recognizer over recorded
videos, as fast as the CPU goes; events to a file, an event store, or standard output.

    mfvan analyze interview.mp4 sessions/ --out events.csv --db events.db --clips clips/

See `mfvan.deploy.runtime.analyze` for what it does where the live pipeline has no answer (the
events' wall-clock times, reproducible ids, clips).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mfvan.deploy.runtime import stage

HELP = "spot and recognize micro-expressions in recorded videos (files or folders)"


def add(p: argparse.ArgumentParser) -> None:
    from mfvan.deploy.inference.choices import BACKENDS as NAMES

    p.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR", help="videos, folders")
    p.add_argument(
        "--out",
        type=Path,
        help="events.jsonl or events.csv (by the suffix; default: JSON lines on standard "
        "output when there is no --db)",
    )
    p.add_argument("--db", type=Path, help="also keep the events, with snapshots, in this store")
    p.add_argument("--clips", type=Path, help="write each event's face clip (MP4) here")
    p.add_argument("--weights", type=Path, help="MFVAN weights (default: the shipped demo ones)")
    p.add_argument("--backend", choices=NAMES, default="onnxruntime", help="inference backend")
    p.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        help="keep only events whose class probability is at least this",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    stage.add_measure_hz(p)
    stage.add_max_faces(p)


def run(args: argparse.Namespace) -> int:

    from tqdm import tqdm

    from mfvan.deploy.inference.backends import BackendUnavailable
    from mfvan.deploy.runtime.analyze import analyze_file, videos

    if args.out is not None and args.out.suffix not in (".jsonl", ".csv", ".json"):
        raise stage.Fatal(f"--out {args.out}: give a .jsonl or a .csv file")
    files = videos(args.paths)
    missing = [p for p in args.paths if not p.exists()]
    if not files and not missing:
        raise stage.Fatal(f"no video files in {', '.join(map(str, args.paths))}")
    try:
        recognizer, _ = stage.load_classifier(args)
    except (BackendUnavailable, ValueError) as e:
        raise stage.Fatal(str(e)) from None
    store, unkept = _store(args.db)
    names = _streams(files)
    params = stage.spotter_params(args)
    results, failed = [], [(p, "no such file or folder") for p in missing]
    not_kept: list[tuple[Path, str]] = []  # analysed, but the store could not keep them
    for path, stream in zip(files, names, strict=True):
        with (
            tqdm(  # a bar on a terminal only (None), none with --quiet
                desc=path.name[-30:],
                unit=" frames",
                disable=True if args.quiet else None,
                leave=False,
                file=sys.stderr,
            ) as bar
        ):
            result = analyze_file(
                path, stream, recognizer, params, args.clips, bar.update, args.max_faces
            )
        if result.error:
            failed.append((path, result.error))
            print(f"mfvan analyze: {path}: {result.error}; skipped", file=sys.stderr)
            continue
        results.append(result)
        if store is not None and not _kept(store, result.events, path):
            unkept = f"its events could not be kept in {args.db} (disk full)"
        if unkept:
            not_kept.append((path, unkept))
        _report(path, result, args.quiet)
    events = [e.as_dict() for r in results for e in r.events]
    try:
        _write(events, args.out, store is None)
    except OSError as e:
        failed.append((args.out, f"could not write it: {e.strerror or e}"))
    if store is not None:
        if store.media_failed:
            print(
                f"mfvan analyze: {store.media_failed} events kept without their snapshots "
                "(they could not be written)",
                file=sys.stderr,
            )
        store.close()
    summary = _summary(args, results, len(files) + len(missing), events, kept=not not_kept)
    print(summary, file=sys.stderr)
    for path, why in failed + not_kept:
        print(f"mfvan analyze: failed: {path}: {why}", file=sys.stderr)
    return 1 if failed or not_kept else 0


def _streams(files: list[Path]) -> list[str]:
    """Each file's stream id: its name without the extension, made safe as a topic, with
    `-i` (its place) added where two would be the same."""
    names = [stage.safe_name(f.stem) or "video" for f in files]
    return [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _store(db: Path | None):
    """(the event store at `db` or None, why its events will not be kept or None): a
    store that cannot be opened for want of space is said, and the events still go to
    --out; one that is not a store is `Fatal`."""
    if db is None:
        return None, None
    from mfvan.stream.outputs.store import EventStore, StoreError, StoreFull

    try:
        return EventStore(db), None
    except StoreFull as e:  # a full disk: the events still go to --out
        print(f"mfvan analyze: {e}; the events will not be kept there", file=sys.stderr)
        return None, f"its events could not be kept in {db}"
    except (StoreError, OSError) as e:
        raise stage.Fatal(str(e)) from None


def _report(path: Path, result, quiet: bool) -> None:
    """One file's lines: a clock jump (always), its counts (unless `quiet`)."""
    if result.clock_jumps:
        print(
            f"mfvan analyze: {path}: its media time jumped {result.clock_jumps} time(s) "
            "(joined recordings, or a camera that restarted): spotting started again after "
            "each",
            file=sys.stderr,
        )
    if not quiet:
        print(
            f"{path}: {len(result.events)} events in {result.seconds_of_video:.1f} s of "
            f"video ({result.frames} frames, {result.seconds_taken:.1f} s)",
            file=sys.stderr,
        )


def _summary(args, results, given: int, events: list[dict], kept: bool) -> str:
    """The closing line: files analysed of those given, video time, events by class."""
    from collections import Counter

    video_s = sum(r.seconds_of_video for r in results)
    taken = sum(r.seconds_taken for r in results)
    classes = Counter(e["label"] for e in events)
    return (
        f"mfvan analyze: {len(results)} of {given} files, "
        f"{video_s / 60:.1f} min of video in {taken:.0f} s "
        f"({taken / max(video_s / 60, 1e-9):.0f} s per minute of video); {len(events)} events"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(classes.items()))})" if events else "")
        + (f" -> {args.out}" if args.out else "")
        + (f"; kept in {args.db}" if args.db and kept else "")
    )


def _kept(store, events, path: Path) -> bool:
    """Whether `store` kept the events of `path` (it keeps them without snapshots when
    only those do not fit); False, said in one line, when the disk refused them."""
    from mfvan.stream.outputs.store import StoreFull

    try:
        store.add(events)
    except StoreFull as e:
        print(f"mfvan analyze: {path}: its events were not kept: {e}", file=sys.stderr)
        return False
    return True


def _write(events: list[dict], out: Path | None, to_stdout: bool) -> None:
    """The events to `out` (CSV or JSON lines, by its suffix), else to standard output
    when `to_stdout` (no store to keep them)."""
    import json

    from mfvan.deploy.commands.events import write_csv

    if out is not None:
        with open(out, "w", newline="") as f:
            if out.suffix == ".csv":
                write_csv(events, f)
            else:
                f.writelines(json.dumps(e) + "\n" for e in events)
    elif to_stdout:
        for e in events:
            print(json.dumps(e))
