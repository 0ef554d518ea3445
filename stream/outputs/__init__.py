"""Outputs that consume events, each a subscriber like any other (it never slows the
recognizer): the event store (`store`: SQLite and snapshot files, `mfvan record`), and the
forwarded outputs `mfvan forward` runs (`mqtt`, `webhook`), found through `REGISTRY`.

A forwarded output is one module and one registry entry: the module defines its class
(an `Output`: `name`, `send(event) -> bool`, `close()`) and a `KIND` (`OutputKind`: its
command-line options, whether the parsed options ask for it, and how to build it from
them); `REGISTRY` names the module. `mfvan forward` offers every registered output's
options and builds those asked for; `mfvan run` offers the same options and passes them
to its `forward` child unchanged (those that may hold a secret in its environment), so
neither names any output.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# output name -> the module that defines its KIND
REGISTRY: dict[str, str] = {
    "mqtt": "mfvan.stream.outputs.mqtt",
    "webhook": "mfvan.stream.outputs.webhook",
}


class Output(Protocol):
    """Where events go. `send` never blocks for long: it queues or drops (False), counting
    the drop (`on_drop(reason)`), and `on_sent()` when one was delivered."""

    name: str

    def send(self, event) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Counters:
    """What an output reports to: `on_drop(reason)` for each event it lost, `on_sent()`
    for each it delivered."""

    on_drop: Callable[[str], None] = lambda reason: None
    on_sent: Callable[[], None] = lambda: None


NO_COUNTERS = Counters()


@dataclass(frozen=True)
class OutputKind:
    """An output as the command line knows it: `add_options(parser)` adds its flags,
    `wanted(args)` says whether the parsed flags ask for it, `build(args, counters)` makes
    it (a ValueError's message says what in the flags is wrong). `secrets`: the dests of
    its flags whose values may hold a secret (a webhook's URL often is one): `mfvan run`
    hands them to its child in the environment (`secret_env`), never on a command line."""

    name: str
    add_options: Callable[[argparse.ArgumentParser], None]
    wanted: Callable[[argparse.Namespace], bool]
    build: Callable[[argparse.Namespace, Counters], Output]
    secrets: tuple[str, ...] = ()


def secret_env(dest: str) -> str:
    """The environment variable that carries flag `dest`'s value (as JSON) to a child."""
    return "MFVAN_SECRET_" + dest.upper()


def secrets_to_env(args: argparse.Namespace) -> dict[str, str]:
    """The registered outputs' secret flags that `args` sets, as a child's environment."""
    return {
        secret_env(dest): json.dumps(getattr(args, dest))
        for kind in kinds()
        for dest in kind.secrets
        if getattr(args, dest, None) is not None
    }


def secrets_from_env(args: argparse.Namespace, environ=os.environ) -> None:
    """Set the secret flags that `args` lacks from the environment (`secrets_to_env`)."""
    for kind in kinds():
        for dest in kind.secrets:
            value = environ.get(secret_env(dest))
            if value is not None and getattr(args, dest, None) is None:
                setattr(args, dest, json.loads(value))


def kinds() -> list[OutputKind]:
    """Every registered output, in registry order."""
    return [importlib.import_module(module).KIND for module in REGISTRY.values()]


def add_options(p: argparse.ArgumentParser) -> None:
    """Every registered output's flags."""
    for kind in kinds():
        kind.add_options(p)


def build(args: argparse.Namespace, counters: Callable[[str], Counters]) -> list[Output]:
    """The outputs the flags ask for, each reporting to `counters(name)`."""
    return [kind.build(args, counters(kind.name)) for kind in kinds() if kind.wanted(args)]
