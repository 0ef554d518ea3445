"""`mfvan record`: keep every event of a recognizer in an SQLite event store (with the
snapshot images of events that carry their crops), until stopped.

    mfvan record ipc:///run/mfvan/events.ipc --db /var/lib/mfvan/events.db --max-age-days 30

`mfvan run --db FILE` starts one as a child. Query the store with `mfvan events`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mfvan.deploy.runtime import stage

HELP = "keep every event in an SQLite event store (with snapshots)"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("endpoint", help="the recognizer's event endpoint")
    add_store_options(p, required=True)
    p.add_argument("--stream", help="only this camera's events")
    p.add_argument(
        "--keys",
        type=Path,
        help="CURVE keys folder holding subscriber.key_secret and the server's server.key",
    )
    p.add_argument(
        "--batch-s",
        type=stage.positive(float),
        default=1.0,
        help="commit at most this long after a batch's first event (a killed recorder loses "
        "at most one batch)",
    )
    p.add_argument("--batch", type=stage.positive(int), default=100, help="or once this many wait")
    stage.add_logging(p)


def add_store_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    """The store's flags, shared with `mfvan run` (which forwards them to its recorder)."""
    p.add_argument(
        "--db",
        type=Path,
        required=required,
        help="the SQLite event store (made if absent; its snapshots in FILE.media/)",
    )
    p.add_argument(
        "--max-age-days",
        type=stage.positive(float),
        help="remove events older than this (default: keep them)",
    )
    p.add_argument(
        "--max-gb",
        type=stage.positive(float),
        help="remove the oldest events while the store and its snapshots exceed this "
        "(default: no limit)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from mfvan.stream import subscribe
    from mfvan.stream.client import Refused
    from mfvan.stream.outputs.store import EventStore, Keeping, StoreError, record
    from mfvan.stream.security import client_curve

    stage.setup_logging("record", args.stream or "-", args.log_format)
    stop = stage.stop_on_signals()
    try:
        store = EventStore(args.db)
    except (StoreError, OSError) as e:
        raise stage.Fatal(str(e)) from None
    curve = client_curve(args.keys, "subscriber") if args.keys else None
    sub = subscribe(args.endpoint, args.stream, timeout_s=0.2, curve=curve)
    stage.log.info("record: events of %s -> %s", args.endpoint, args.db)
    try:
        keeping = Keeping(
            batch_s=args.batch_s,
            batch_n=args.batch,
            max_age_s=args.max_age_days * 86400 if args.max_age_days else None,
            max_bytes=args.max_gb * 1e9 if args.max_gb else None,
        )
        added = record(sub, store, stop, keeping)
    except Refused as e:
        print(f"mfvan record: {e}", file=sys.stderr)
        return stage.EXIT_FATAL
    finally:
        sub.close()
        store.close()
    stage.log.info(
        "record: %d events kept in %s; %d malformed messages dropped", added, args.db, sub.dropped
    )
    return 0
