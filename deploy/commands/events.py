"""`mfvan events`: query an event store (`mfvan record`, `mfvan run --db`,
`mfvan analyze --db`).

    mfvan events list --db events.db --stream door --label surprise --since 2h
    mfvan events show --db events.db 0193a4c2          # an id, or the start of one
    mfvan events export --db events.db --format csv --out events.csv

Times (`--since`, `--until`): ISO 8601 (`2026-12-03T14:00`, UTC unless it says), seconds
since the epoch, or a span back from now (`90s`, `30m`, `2h`, `7d`).
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
import sys
import time
from pathlib import Path

HELP = "list, show and export the events of an event store"
CSV_COLUMNS = (
    "id", "stream", "face_id", "label", "confidence", "apex_iso", "onset_time", "apex_time",
    "offset_time", "onset", "apex", "offset", "spot_score", "model", "snapshots", "clip",
)  # fmt: skip


def when(text: str) -> float:
    """A time given on the command line, as seconds since the epoch."""
    span = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if span:
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[span[2]]
        return time.time() - float(span[1]) * seconds
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):  # `nan` matched nothing, silently
            raise argparse.ArgumentTypeError(f"{text!r} is not a time")
        return seconds
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: ISO 8601, epoch seconds, or 30m / 2h / 7d ago"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()


def count(text: str) -> int:
    """A number of events: 1 or more (SQLite's LIMIT -1 means no limit at all)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of 1 or more")
    return n


def fraction(text: str) -> float:
    """A probability, 0 to 1."""
    try:
        p = float(text)
    except ValueError:
        p = math.nan
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability from 0 to 1")
    return p


def add(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, words in (
        ("list", "events as a table (newest last), or JSON lines"),
        ("show", "one event, whole"),
        ("export", "events as CSV or JSON lines"),
    ):
        a = sub.add_parser(name, help=words, description=words)
        a.add_argument("--db", type=Path, required=True, help="the event store")
        if name == "show":
            a.add_argument("id", help="an event id, or enough of its start to be one")
            continue
        a.add_argument("--stream", help="one camera's")
        a.add_argument("--face", type=int, metavar="ID", help="one face's (its track id)")
        a.add_argument("--label", help="one class's")
        a.add_argument("--since", type=when, help="apex at or after this")
        a.add_argument("--until", type=when, help="apex before this")
        a.add_argument("--min-confidence", type=fraction, help="class probability at least")
        if name == "list":
            a.add_argument("--limit", type=count, default=50, help="the newest this many")
            a.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            a.add_argument("--format", choices=("csv", "jsonl"), default="csv")
            a.add_argument("--out", type=Path, help="this file (default: standard output)")


def run(args: argparse.Namespace) -> int:
    import json

    from mfvan.deploy.runtime.stage import Fatal
    from mfvan.stream.outputs.store import EventStore, StoreError

    try:
        store = EventStore(args.db, readonly=True)
    except StoreError as e:
        raise Fatal(str(e)) from None
    with store:
        if args.action == "show":
            event = store.get(args.id)
            if event is None:
                raise Fatal(f"no event (or more than one) with an id starting {args.id!r}")
            print(json.dumps(event, indent=2))
            return 0
        filters = dict(
            stream=args.stream,
            label=args.label,
            since=args.since,
            until=args.until,
            min_confidence=args.min_confidence,
            face=args.face,
        )
        if args.action == "list":
            events = store.query(**filters, limit=args.limit, newest_first=True)[::-1]
            if args.json:
                for e in events:
                    print(json.dumps(e))
            else:
                print(_table(events))
            return 0
        events = store.query(**filters)
        try:
            out = open(args.out, "w", newline="") if args.out else sys.stdout
        except OSError as e:
            raise Fatal(f"--out {args.out}: {e.strerror or e}") from None
        try:
            if args.format == "jsonl":
                for e in events:
                    out.write(json.dumps(e) + "\n")
            else:
                write_csv(events, out)
        except OSError as e:  # a full disk
            raise Fatal(f"--out {args.out or 'standard output'}: {e.strerror or e}") from None
        finally:
            if args.out:
                out.close()
        if args.out:
            print(f"{len(events)} events -> {args.out}", file=sys.stderr)
        return 0


def _table(events: list[dict]) -> str:
    if not events:
        return "no events"
    lines = [
        f"{'id':<13} {'time (UTC)':<23} {'stream':<12} {'face':>4} {'label':<10} {'conf':>5}"
        "  snapshots"
    ]
    for e in events:
        face = e.get("face_id") or "-"
        lines.append(
            f"{e['id'][:13]:<13} {e['apex_iso'][:23]:<23} {e['stream'][:12]:<12} {face:>4} "
            f"{e['label'][:10]:<10} {e['confidence']:>5.2f}  {len(e['snapshots']) or '-'}"
        )
    return "\n".join(lines)


def write_csv(events: list[dict], out) -> None:
    import csv

    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for e in events:
        row = {**e, "snapshots": " ".join(e.get("snapshots", []))}
        writer.writerow([row.get(c, "") for c in CSV_COLUMNS])
