"""`mfvan forward`: the recognizer's events to MQTT and webhooks, as a subscriber like
any other (a slow broker or endpoint costs this process drops, never the recognizer).

    mfvan forward ipc:///run/mfvan/events.ipc --mqtt 127.0.0.1:1883
    mfvan forward tcp://10.0.0.5:5560 --keys /etc/mfvan/keys --webhook https://example.org/hook

`mfvan run --mqtt ... --webhook ...` starts one as a child. What is sent and how it
fails: `mfvan.stream.outputs.mqtt`, `mfvan.stream.outputs.webhook`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mfvan.deploy.runtime import stage

HELP = "send events to an MQTT broker and to webhooks"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("endpoint", help="the recognizer's event endpoint")
    add_output_options(p)
    p.add_argument("--stream", help="only this camera's events")
    p.add_argument(
        "--keys",
        type=Path,
        help="CURVE keys folder holding subscriber.key_secret and the server's server.key",
    )
    p.add_argument("--metrics-port", type=stage.port, default=stage.DEFAULT_PORTS["forward"])
    stage.add_logging(p)


def add_output_options(p: argparse.ArgumentParser) -> None:
    """Every registered output's flags (`mfvan.stream.outputs.REGISTRY`), shared with
    `mfvan run` (which forwards them to its child)."""
    from mfvan.stream import outputs

    outputs.add_options(p)


def outputs(args: argparse.Namespace, metrics=None) -> list:
    """The outputs the flags ask for, their drops and deliveries counted in `metrics`."""
    from mfvan.stream.outputs import Counters, build

    def counted(name: str) -> Counters:
        if metrics is None:
            return Counters()
        return Counters(
            lambda reason: metrics.outputs_dropped.labels(name, reason).inc(),
            metrics.outputs_sent.labels(name).inc,
        )

    try:
        return build(args, counted)
    except ValueError as e:
        raise stage.Fatal(str(e)) from None


def run(args: argparse.Namespace) -> int:
    import sys

    from mfvan.stream import subscribe
    from mfvan.stream.client import Refused
    from mfvan.stream.security import client_curve

    stage.setup_logging("forward", args.stream or "-", args.log_format)
    from mfvan.stream.outputs import kinds, secrets_from_env

    secrets_from_env(args)  # what `mfvan run` hands over in the environment

    if not any(kind.wanted(args) for kind in kinds()):
        raise stage.Fatal("nothing to forward to: give --mqtt HOST[:PORT] and/or --webhook URL")
    stop = stage.stop_on_signals()
    m = stage.metrics("forward", args.metrics_port)
    targets = outputs(args, m)
    curve = client_curve(args.keys, "subscriber") if args.keys else None
    sub = subscribe(args.endpoint, args.stream, timeout_s=0.2, curve=curve)
    m.ready.set()
    stage.log.info("forward: events of %s -> %s", args.endpoint, ", ".join(t.name for t in targets))
    counted = 0  # the subscription's malformed messages already in the metric
    try:
        while not stop.is_set():
            for event in sub:
                for target in targets:
                    try:  # an event an output cannot render costs that event alone
                        target.send(event)
                    except (TypeError, ValueError, RecursionError) as e:
                        m.outputs_dropped.labels(target.name, "unrenderable").inc()
                        stage.log.warning("forward: %s skipped an event: %s", target.name, e)
                counted = _count_malformed(sub, counted, m)
                if stop.is_set():
                    break
            counted = _count_malformed(sub, counted, m)
    except Refused as e:
        print(f"mfvan forward: {e}", file=sys.stderr)
        return stage.EXIT_FATAL
    finally:
        sub.close()
        for target in targets:
            target.close()
    if sub.dropped:
        stage.log.info("forward: %d malformed messages dropped", sub.dropped)
    return 0


def _count_malformed(sub, counted: int, m) -> int:
    """Add what decode refused since `counted` to the dropped metric; the new count."""
    if sub.dropped > counted:
        m.dropped.labels("forward", "", "malformed").inc(sub.dropped - counted)
    return sub.dropped
