"""`mfvan subscribe`: print the recognizer's events as they arrive (text or JSON lines)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HELP = "print recognition events as they arrive"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("endpoint", help="the recognizer's event endpoint")
    p.add_argument("--stream", help="only this stream's events")
    p.add_argument(
        "--face",
        type=int,
        metavar="ID",
        help="only the events of the face with this track id (ids are per stream: use with "
        "--stream)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument(
        "--timeout",
        type=float,
        help="give up after this many seconds without an event: exit status 1 (default: wait "
        "for ever)",
    )
    p.add_argument(
        "--keys",
        type=Path,
        help="CURVE keys folder holding subscriber.key_secret and the server's server.key",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from mfvan.deploy.runtime import stage
    from mfvan.stream import subscribe
    from mfvan.stream.client import Refused
    from mfvan.stream.security import client_curve

    # SIGINT / SIGTERM end it within stage.STOP_S whatever it is blocked in (a watchdog
    # exits the process past that), and the wait below wakes every 0.2 s to see them
    stop = stage.stop_on_signals()
    n = skipped = 0
    curve = client_curve(args.keys, "subscriber") if args.keys else None
    sub = subscribe(args.endpoint, args.stream, 0.2, curve=curve, face=args.face)
    absent = nobody_there(args.endpoint)
    if absent:
        print(f"mfvan subscribe: warning: {absent}; waiting for it", file=sys.stderr)
    last = time.monotonic()
    try:
        while not stop.is_set():
            for event in sub:
                try:  # an event it cannot render costs that event alone
                    line = (
                        json.dumps(event.as_dict(), allow_nan=False)
                        if args.json
                        else format_event(event)
                    )
                except (TypeError, ValueError, RecursionError) as e:
                    skipped += 1
                    print(f"mfvan subscribe: skipped an event: {e}", file=sys.stderr)
                    continue
                print(line, flush=True)
                n += 1
                last = time.monotonic()
                if args.count and n >= args.count:
                    return 0
                if stop.is_set():
                    break
            if args.timeout is not None and time.monotonic() - last >= args.timeout:
                which = f" of stream {args.stream}" if args.stream else ""
                print(
                    f"mfvan subscribe: no events{which} in {args.timeout:g} s"
                    + (f" (after {n})" if n else "")
                    + (f"; {absent}" if absent and not n else ""),
                    file=sys.stderr,
                )
                return 1  # timed out
        return 0
    except KeyboardInterrupt:
        return 0
    except Refused as e:
        print(f"mfvan subscribe: {e}", file=sys.stderr)
        return 2
    finally:
        sub.close()
        if sub.missed or sub.dropped or skipped:
            print(
                f"mfvan subscribe: {n} events; {sub.missed} missed (this subscriber was too "
                f"slow), {sub.dropped} malformed messages dropped, {skipped} not renderable",
                file=sys.stderr,
            )


def nobody_there(endpoint: str) -> str | None:
    """Why nothing can be publishing at `endpoint` now (an ipc:// socket file that does
    not exist, a loopback tcp:// port that refuses connections), or None. A subscriber still waits:
    the recognizer may be starting."""
    import socket
    from urllib.parse import urlsplit

    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if path.startswith("@") or os.path.exists(path):  # @: Linux's abstract namespace
            return None
        return f"{endpoint} does not exist (is `mfvan run` running? it prints its endpoint)"
    if endpoint.startswith("tcp://"):
        try:
            host, port = urlsplit(endpoint).hostname, urlsplit(endpoint).port
        except ValueError:
            return None
        if host not in ("127.0.0.1", "localhost", "::1") or port is None:
            return None  # only loopback is probed: a remote recognizer sees no stray peer
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except ConnectionRefusedError:
            return f"nothing listens at {endpoint}"
        except OSError:
            return None  # unreachable or slow: not known to be wrong
    return None


def format_event(event) -> str:
    """One line per event, as `mfvan subscribe` and `mfvan demo` print it."""
    probs = " ".join(f"{k} {v:.2f}" for k, v in event.probs.items())
    t = event.times
    latency = (t.get("t_recognize", 0) - t.get("t_apex", 0)) / 1e6
    face = f" face {event.face_id}" if event.face_id is not None else ""
    return (
        f"[{event.stream}]{face} {event.label:<9} {event.confidence:.0%} sure  "
        f"apex frame {event.apex} "
        f"(onset {event.onset}, offset {event.offset})  {probs}  "
        f"apex->event {latency:.0f} ms  model {event.model}"
    )
