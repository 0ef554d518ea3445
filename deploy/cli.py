"""The `mfvan` command: one console script, one subcommand per task.

This module is the command table only: each command's flags and body live in a module of
`mfvan.deploy.commands` named for it, which has `HELP`, `add(parser)` and `run(args)`.
The modules are imported to build the parser; each imports what its body needs (torch,
ZeroMQ, PyAV) only when it runs, so `mfvan --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# command name -> its module in mfvan.deploy.commands, in the order `mfvan --help` lists
COMMANDS = {
    "run": "run",
    "ingest": "ingest",
    "spot": "spot",
    "recognize": "recognize",
    "subscribe": "subscribe",
    "record": "record",
    "forward": "forward",
    "events": "events",
    "web": "web",
    "analyze": "analyze",
    "keys": "keys",
    "demo": "demo",
    "reproduce": "reproduce",
    "train": "train",
    "eval": "eval",
    "synth": "synth",
    "spot-eval": "spot_eval",
    "heldout": "heldout",
    "bench": "bench",
    "export": "export",
    "warm-up": "warm_up",
    "completion": "completion",
}


def command(name: str):
    """The module of command `name` (its HELP, add, run)."""
    return importlib.import_module(f"mfvan.deploy.commands.{COMMANDS[name]}")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default shown once: added to its help unless the help already says its
    default in its own words, and never for an absent value (None) or an off switch;
    descriptions and epilogs (folder layouts) printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
            or not action.option_strings
            or action.nargs == 0
        ):
            return text
        return f"{text} (default: %(default)s)"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("mfvan")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from mfvan.deploy.runtime import config

    parser = argparse.ArgumentParser(
        prog="mfvan",
        description="Real-time micro-expression recognition: spot, classify, publish.",
    )
    parser.add_argument("--version", action="version", version=f"mfvan {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = command(name)
        p = sub.add_parser(
            name, help=module.HELP, description=module.HELP, formatter_class=_HelpFormatter
        )
        module.add(p)
        if name in config.CONFIGURABLE:
            p.add_argument(
                "--config",
                type=Path,
                help="a TOML file of flags (keys: the flags without dashes); the environment "
                "(MFVAN_<FLAG>) and the command line override it",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    from mfvan.deploy.runtime import config

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    name = next((a for a in argv if not a.startswith("-")), None)
    lists = {}
    if name in config.CONFIGURABLE:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", type=Path)
        known, _ = pre.parse_known_args(argv)
        try:
            lists = config.apply(config.subparser(parser, name), known.config)
        except config.ConfigError as e:
            print(f"mfvan {name}: {e}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    config.fill(args, lists)
    from mfvan.deploy.runtime.stage import EXIT_FATAL, Fatal
    from mfvan.stream.security import EndpointError

    try:
        return command(args.command).run(args)
    except (Fatal, EndpointError) as e:  # a mistake the user can mend: one line, no traceback
        print(f"mfvan {args.command}: {e}", file=sys.stderr)
        return EXIT_FATAL
    except BaseException as e:  # Ctrl-C: what was finished stays, the rest is said
        if not _interrupted(e):
            raise
        print(f"mfvan {args.command}: interrupted", file=sys.stderr)
        return 130


def _interrupted(error: BaseException | None) -> bool:
    """Whether Ctrl-C caused `error`: a KeyboardInterrupt, or one that it set off (Numba
    turns one raised while it loads a compiled kernel into a SystemError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
