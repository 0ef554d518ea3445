"""`mfvan demo`: the live pipeline on SynthME's camera for about a minute, watched by a
subscriber, then scored against SynthME's ground truth.

It starts `mfvan run --source synth://?fps=F&seed=S&seconds=T&faces=2` (two people in view, each
scored against its own ground truth; the shipped demo weights,
ONNX Runtime), subscribes to its events and prints each as it arrives, says where each
stage's /metrics is, keeps every event in an event store (`--db`, with its snapshot
images), serves the web view (`--web`, faces on: they are SynthME's) for its duration,
and ends with: the micro-expressions the stream showed, how many were
spotted (an event whose apex falls inside one), how many were classified right (its
3-class label), what else was spotted, and the latency percentiles from the apex's
capture to the event and from the confirming frame's capture to the event.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mfvan.stream.metrics import STAGES

HELP = "the live pipeline on SynthME's camera for a minute, scored"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="how long the camera runs")
    p.add_argument("--fps", type=float, default=50.0, help="the camera's frame rate")
    p.add_argument(
        "--faces",
        type=int,
        default=2,
        choices=(1, 2, 3),
        help="people in the camera's view (an interview's two by default), each its own "
        "subject with its own expressions, tracked and spotted apart",
    )
    p.add_argument("--seed", type=int, default=7, help="SynthME seed (the weights saw seed 0)")
    p.add_argument(
        "--config",
        default="morph-heldout",
        help="the camera's SynthME preset: morph-heldout (real faces made from held-out "
        "portraits, never trained, tuned or calibrated on), standard (parametric faces), ...",
    )
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--metrics-base-port", type=int, default=9101)
    p.add_argument(
        "--db",
        type=Path,
        default=Path(".demo/events.db"),
        help="the event store the run keeps its events in, with their snapshots",
    )
    p.add_argument(
        "--web",
        default="127.0.0.1:8321",
        metavar="HOST:PORT",
        help="the web view's address, faces on (the port taken: another free one; '' for none)",
    )


def _free(address: str) -> str:
    """`address`, or the same host on a free port when something listens there already."""
    import socket

    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
            return address
        except OSError:
            s.bind((host, 0))
            return f"{host}:{s.getsockname()[1]}"


def run(args: argparse.Namespace) -> int:
    from mfvan.deploy.commands.subscribe import format_event
    from mfvan.stream import subscribe

    runtime = Path(tempfile.mkdtemp(prefix="mfvan-demo-"))
    source = _source(args)
    cmd = [
        sys.executable,
        "-m",
        "mfvan.deploy.cli",
        "run",
        "--source",
        source,
        "--backend",
        args.backend,
        "--runtime-dir",
        str(runtime),
        "--metrics-base-port",
        str(args.metrics_base_port),
        "--seconds",
        str(args.seconds + 60),
        "--db",
        str(args.db),
        "--with-crops",  # so that the store keeps each event's snapshots
    ]
    web = _free(args.web) if args.web else None
    env = dict(os.environ)
    if web:  # SynthME's faces, not people's: shown, behind a token made for this demo
        cmd += ["--web", web, "--web-faces"]
        env.setdefault("MFVAN_WEB_TOKEN", secrets.token_urlsafe(24))
    print(f"mfvan demo: {' '.join(cmd[3:])}")
    ports = range(args.metrics_base_port, args.metrics_base_port + 3)
    print(
        f"metrics, every stage's: http://127.0.0.1:{args.metrics_base_port - 1}/metrics; "
        + "each stage's own: "
        + ", ".join(
            f"{name} http://127.0.0.1:{port}/metrics"
            for name, port in zip(STAGES, ports, strict=True)
        )
    )
    print(f"event store: {args.db} (query it: mfvan events list --db {args.db})")
    if web:
        print(
            f"web view: open http://{web}/?token={env['MFVAN_WEB_TOKEN']} in a browser while "
            "the demo runs (cameras, live events with their images; history at /history)"
        )
    print("events (as `mfvan subscribe` prints them; weights trained on SynthME, not real faces):")
    # SIGTERM ends the demo as Ctrl-C does: its pipeline stopped, its runtime folder removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    pipeline = subprocess.Popen(cmd, env=env)
    events = []
    try:
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=1.0) as sub:
            # the camera starts once the recognizer is up, runs `seconds`, and ends; then
            # `mfvan run` lets the stages drain and exits
            while pipeline.poll() is None:
                for event in sub:
                    events.append(event)
                    print("  " + format_event(event), flush=True)
                    break
    finally:
        pipeline.terminate()
        try:
            pipeline.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pipeline.kill()
        shutil.rmtree(runtime, ignore_errors=True)  # `run` empties it; the folder is ours
    print(score(events, args))
    print(
        f"these events, with their onset, apex and difference images, are kept in {args.db}:"
        f"\n  .venv/bin/mfvan events list --db {args.db}"
        f"\n  .venv/bin/mfvan events show --db {args.db} ID"
        f"\n  .venv/bin/mfvan events export --db {args.db} --format csv --out events.csv"
    )
    return 0


def _source(args) -> str:
    return (
        f"synth://?fps={args.fps:g}&seed={args.seed}&seconds={args.seconds:g}&config={args.config}"
        f"&faces={args.faces}"
    )


def _face_of(source, event) -> int | None:
    """The scene's face (0, 1, ...) whose box at the event's apex holds the centre of the
    event's face square; 0 for a one-face camera, None when no box holds it."""
    if source.scene is None:
        return 0
    if event.face is None:
        return None
    x, y, w, h = event.face
    cx, cy = x + w / 2, y + h / 2
    for i, (bx, by, bw, bh) in enumerate(source.scene_boxes(event.apex)):
        if bx <= cx <= bx + bw and by <= cy <= by + bh:
            return i
    return None


def score(events, args) -> str:
    """The demo's closing report, against the SynthME stream's own schedule: each event is
    the face's whose box holds the centre of its face square (one face: that face's)."""
    from mfvan.deploy.runtime.synth_source import SynthSource

    source = SynthSource(_source(args))
    n = int(args.seconds * args.fps)
    streams = source.streams
    micro = [
        (face, e)
        for face, stream in enumerate(streams)
        for e in stream.expressions_until(n)
        if e.offset < n and e.kind == "micro"
    ]
    faces = [_face_of(source, ev) for ev in events]
    spotted, right, other = set(), 0, 0
    for ev, face in zip(events, faces, strict=True):
        hit = next(
            (i for i, (f, e) in enumerate(micro) if f == face and e.onset <= ev.apex <= e.offset),
            None,
        )
        if hit is None:
            other += 1
        elif hit not in spotted:
            spotted.add(hit)
            right += ev.label == micro[hit][1].label3
    apex = [(e.times["t_recognize"] - e.times["t_apex"]) / 1e6 for e in events]
    system = [(e.times["t_recognize"] - e.times["t_capture"]) / 1e6 for e in events]

    def pct(values):
        if not values:
            return "-"
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return f"p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms"

    labelled = [e for _, e in micro if e.label3]
    from mfvan.model.spotting import NONE, OTHERS
    from mfvan.model.strs import Labelled, score_str

    classes = sorted({e.label3 for e in labelled} | {e.label for e in events} - {NONE, OTHERS})
    chain = score_str(
        [
            (
                [
                    Labelled(e.onset, e.offset, e.label)
                    for e, g in zip(events, faces, strict=True)
                    if g == f
                ],
                [Labelled(e.onset, e.offset, e.label3 or None) for g, e in micro if g == f],
            )
            # events on no face's box: false spots of none
            for f in [*range(len(streams)), None]
        ],
        classes,
    )
    return "\n".join(
        [
            f"score against SynthME's ground truth ({args.seconds:g} s at {args.fps:g} fps, "
            f"seed {args.seed}, {args.faces} {args.config} face{'s' * (args.faces > 1)}"
            + (", identities never trained on" if args.config == "morph-heldout" else "")
            + (", each event scored against its own face's" if args.faces > 1 else "")
            + "):",
            f"  micro-expressions shown: {len(micro)} ({len(labelled)} with a 3-class label)",
            f"  spotted: {len(spotted)}; classified right: {right}; other spots "
            f"(macro-expressions, blinks, nothing): {other}",
            f"  spot-then-recognize (MEGC STR, IoU >= 0.5): spotting F1 {chain['f1']:.3f} "
            f"(TP {chain['tp']}, FP {chain['fp']}, FN {chain['fn']}), UF1 {chain['uf1']:.3f} "
            f"on {chain['recognized']} labelled TPs, STRS {chain['strs']:.3f}",
            f"  latency, apex capture -> event: {pct(apex)}",
            f"  latency, confirming frame's capture -> event: {pct(system)}",
        ]
    )
