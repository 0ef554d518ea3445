"""Flags from a TOML file and from the environment, for the live commands.

    mfvan run --config /etc/mfvan/mfvan.toml
    MFVAN_METRICS_BASE_PORT=9201 MFVAN_EVENTS=tcp://127.0.0.1:5560 mfvan run --source ...

Every flag of `run`, `ingest`, `spot`, `recognize` and `subscribe` can be given three
ways; the first found wins: the command line, then the environment (`MFVAN_` and the flag
in capitals, dashes as underscores: `--metrics-base-port` is `MFVAN_METRICS_BASE_PORT`),
then the file (its key is the flag without dashes, either `metrics-base-port` or
`metrics_base_port`), then the built-in default. A flag given several times (`--source`)
is a TOML array, or whitespace-separated in the environment. Cameras may also be
`[cameras.NAME]` tables (`source`, `enabled`, `fps`, `realtime`), as Frigate's are: each
enabled one is a `--source NAME=SOURCE`, after any in a top-level `source` list. On/off
flags (`--insecure`) are TOML booleans, or 1/0, true/false, yes/no in the environment. An
unknown key, a value of the wrong type or an unreadable file is refused with one line
naming it; a typo never falls back to a default silently.

An example, `deploy/ops/mfvan.toml`, lists every key of `mfvan run`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CONFIGURABLE = ("run", "ingest", "spot", "recognize", "subscribe")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    pass


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Flag actions by dest (positional arguments and --help/--config excluded)."""
    return {
        a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")
    }


def _convert(action: argparse.Action, value, where: str, env: bool = False):
    """A TOML or environment value as the flag's own parser would give it."""
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(value, str) and value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if many:
        items = value.split() if env else value
        if not isinstance(items, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_one(action, v, where) for v in items]
    return _one(action, value, where)


def _one(action: argparse.Action, value, where: str):
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: expected one value, got {value!r}")
    convert = action.type or str
    try:
        value = convert(value if isinstance(value, str) else str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(action.choices)}")
    return value


def load_file(path: Path, parser: argparse.ArgumentParser) -> dict:
    """The file's values by dest; refuses keys that are not flags of this command."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8
        raise ConfigError(f"{path} is not UTF-8 (byte {e.start}): TOML files are") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    actions = _actions(parser)
    values = {}
    if "cameras" in data and isinstance(actions.get("source"), argparse._AppendAction):
        sources, options = _cameras(data.pop("cameras"), f"{path}: cameras")
        values["source"] = _convert(actions["source"], data.pop("source", []), f"{path}: source")
        values["source"] += sources
        values["camera_options"] = options
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            known = ", ".join(sorted(a.replace("_", "-") for a in actions))
            raise ConfigError(f"{path}: unknown key {key!r} (known: {known})")
        values[dest] = _convert(actions[dest], value, f"{path}: {key}")
    return values


CAMERA_KEYS = {"source": str, "enabled": bool, "fps": (int, float), "realtime": bool}


def _cameras(table, where: str) -> tuple[list[str], dict]:
    """`[cameras.NAME]` tables -> (`NAME=SOURCE` for each enabled camera, in the file's
    order; {NAME: its other keys}). Each table: `source` (required), `enabled` (default
    true), `fps` (the rate a /dev/video camera is asked for, or assumed for a source that
    declares none), `realtime` (a file played at its native rate)."""
    from mfvan.deploy.runtime.stage import CAMERA_NAME

    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected [cameras.NAME] tables, got {table!r:.60}")
    sources, options = [], {}
    for name, camera in table.items():
        at = f"{where}.{name}"
        if not CAMERA_NAME.fullmatch(name):
            raise ConfigError(
                f"{at}: a camera name is letters, digits and _.- (starting with a letter or "
                "digit), at most 64 characters"
            )
        if not isinstance(camera, dict):
            raise ConfigError(f"{at}: expected a table with source = ..., got {camera!r:.60}")
        for key, value in camera.items():
            kind = CAMERA_KEYS.get(key)
            if kind is None:
                raise ConfigError(f"{at}: unknown key {key!r} (known: {', '.join(CAMERA_KEYS)})")
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ConfigError(f"{at}: {key} cannot be {value!r:.60}")
        if "source" not in camera:
            raise ConfigError(f"{at}: no source")
        if "fps" in camera and not 0 < camera["fps"] <= 1000:
            raise ConfigError(f"{at}: fps {camera['fps']!r} is not in (0, 1000]")
        if camera.get("enabled", True):
            sources.append(f"{name}={camera['source']}")
            options[name] = {k: v for k, v in camera.items() if k in ("fps", "realtime")}
    return sources, options


def from_environment(parser: argparse.ArgumentParser, environ=os.environ) -> dict:
    values = {}
    for dest, action in _actions(parser).items():
        name = "MFVAN_" + dest.upper()
        if name in environ:
            values[dest] = _convert(action, environ[name], name, env=True)
    return values


def apply(parser: argparse.ArgumentParser, config: Path | None, environ=os.environ) -> dict:
    """Make the file's and the environment's values the parser's defaults (the command
    line still wins), and a flag they give no longer required on the command line.
    Returns the values of repeatable flags (`--source`), which `fill` sets after parsing
    when the command line gave none (as defaults, argparse would append to them)."""
    values = load_file(config, parser) if config else {}
    values.update(from_environment(parser, environ))
    actions = _actions(parser)
    lists = {}
    if "camera_options" in values:
        parser.set_defaults(camera_options=values.pop("camera_options"))
    for dest, value in values.items():
        actions[dest].required = False
        if isinstance(actions[dest], argparse._AppendAction):
            lists[dest] = value
        else:
            parser.set_defaults(**{dest: value})
    return lists


def fill(args: argparse.Namespace, lists: dict) -> None:
    for dest, value in lists.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)
