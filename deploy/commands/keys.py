"""`mfvan keys`: CURVE key pairs for the endpoints that leave this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "make CURVE key pairs for endpoints off this machine"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="where to write the key pairs")


def run(args: argparse.Namespace) -> int:
    from mfvan.stream.security import make_keys

    folder = make_keys(args.folder)
    print(
        f"CURVE keys in {folder} (secret keys 0600): server.key(_secret) for every stage's "
        "bound tcp:// endpoint; stage.key(_secret) for stages connecting to stages; "
        "subscriber.key(_secret) for subscribers of events, which cannot pull frames; "
        "authorized/stages and authorized/subscribers hold the public keys let in. Copy the "
        "folder to every stage's host; give a subscriber's host only server.key and the "
        "subscriber pair. Pass --keys."
    )
    return 0
