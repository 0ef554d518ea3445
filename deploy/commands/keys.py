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
        f"CURVE keys in {folder}: server.key(_secret) for a stage's bound tcp:// endpoint, "
        "client.key(_secret) for what connects to it (stages and subscribers), authorized/ "
        "for the clients let in; copy the folder to every host and pass --keys"
    )
    return 0
