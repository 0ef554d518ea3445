"""`mfvan bench web`: the web view under watch, for as long as asked: `mfvan run` of N
synthetic cameras with its view (faces on), N browsers' MJPEG previews and one live feed
(plain HTTP readers, as a browser reads them), sampled every `sample_s`: the view's
resident memory (from its /metrics), preview frames and events received.

Side by side: the spot processes' CPU per frame while nobody watches (the first
`baseline_s`) and while every camera is watched, which is what the view costs the
pipeline.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from mfvan.stream.metrics import fetch

from . import cpu_name, stage_cpu

BOUNDARY = b"--mfvanframe"


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


class _Reader(threading.Thread):
    """Reads a streamed HTTP response as a browser would, counting `marker`s."""

    def __init__(self, url: str, marker: bytes):
        super().__init__(daemon=True)
        self.url, self.marker, self.count, self.stop = url, marker, 0, threading.Event()

    def run(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=30) as r:
                tail = b""
                while not self.stop.is_set():
                    chunk = r.read1(65536)
                    if not chunk:
                        return
                    data = tail + chunk
                    self.count += data.count(self.marker)
                    tail = data[-len(self.marker) + 1 :]
        except (OSError, http.client.HTTPException):
            return  # the view stopped: the count so far stands


def bench_web(
    cameras: int = 3,
    minutes: float = 10.0,
    fps: float = 30.0,
    sample_s: float = 30.0,
    baseline_s: float = 60.0,
    port: int = 8329,
    metrics_base_port: int = 9201,
) -> dict:
    runtime = Path(tempfile.mkdtemp(prefix="mfvan-bench-web-"))
    seconds = baseline_s + minutes * 60 + 120
    names = [f"cam{i + 1}" for i in range(cameras)]
    argv = [sys.executable, "-m", "mfvan", "run", "--seconds", f"{seconds:g}", "--overcommit"]
    token = secrets.token_urlsafe(24)  # faces on: the view needs one, even on loopback
    opener = urllib.request.build_opener()
    opener.addheaders = [("Authorization", f"Bearer {token}")]
    urllib.request.install_opener(opener)  # every request of this benchmark carries it
    for i, name in enumerate(names):
        argv += ["--source", f"{name}=synth://?fps={fps:g}&seed={10 + i}&seconds={seconds:g}"]
    argv += ["--web", f"127.0.0.1:{port}", "--web-faces", "--with-crops"]
    argv += ["--runtime-dir", str(runtime / "run"), "--metrics-base-port", str(metrics_base_port)]
    env = {**os.environ, "MFVAN_WEB_TOKEN": token}
    run = subprocess.Popen(argv, stderr=open(runtime / "run.log", "w"), env=env)
    base = f"http://127.0.0.1:{port}"
    readers: list[_Reader] = []
    try:
        _wait_tracked(base, cameras, runtime)

        spot_metrics = [
            f"http://127.0.0.1:{metrics_base_port + 2 * i + 1}/metrics" for i in range(cameras)
        ]

        def spot_now() -> tuple[float, float]:
            """The spot processes' CPU seconds and frames so far."""
            frames = sum(_metric(u, "mfvan_frames_in_total") for u in spot_metrics)
            return stage_cpu(run.pid).get("spot", 0.0), frames

        def ms_per_frame(since: tuple[float, float]) -> float:
            (cpu0, frames0), (cpu1, frames1) = since, spot_now()
            return 1000 * (cpu1 - cpu0) / max(1.0, frames1 - frames0)

        before = spot_now()
        time.sleep(baseline_s)
        unwatched = ms_per_frame(before)
        readers = [_Reader(f"{base}/cameras/{n}/preview.mjpg", BOUNDARY) for n in names]
        readers.append(_Reader(f"{base}/live", b"event: event"))
        for r in readers:
            r.start()
        started = time.monotonic()
        before = spot_now()
        samples = _watch(base, readers, run.pid, minutes * 60, sample_s)
        watched = ms_per_frame(before)
        return {
            "machine": cpu_name(),
            "cores": os.cpu_count(),
            "cameras": cameras,
            "fps": fps,
            "minutes": minutes,
            "samples": samples,
            "spot_ms_per_frame_unwatched": round(unwatched, 3),
            "spot_ms_per_frame_watched": round(watched, 3),
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        for r in readers:
            r.stop.set()
        run.terminate()
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()


def _wait_tracked(base: str, cameras: int, runtime: Path, timeout_s: float = 180) -> None:
    """Until the view says every camera's face is tracked."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = fetch(base + "/api/cameras", timeout_s=2)
        try:
            if (
                text is not None
                and sum(c["state"] == "tracking" for c in json.loads(text)) == cameras
            ):
                return
        except ValueError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the cameras were not tracked in {timeout_s:g} s; see {runtime}/run.log")


def _watch(base: str, readers: list, pid: int, seconds: float, sample_s: float) -> list[dict]:
    """While `readers` watch: every `sample_s`, the view's memory, what each reader got, and
    the view's CPU."""
    samples, started = [], time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(sample_s)
        rss = _metric(f"{base}/metrics", "process_resident_memory_bytes")
        samples.append(
            {
                "t_s": round(time.monotonic() - started),
                "rss_mb": round(rss / 2**20, 1),
                "frames": [r.count for r in readers[:-1]],
                "events": readers[-1].count,
                "web_cpu_s": round(stage_cpu(pid).get("web", 0.0), 1),
            }
        )
        print("  " + json.dumps(samples[-1]), flush=True)
    return samples


def format_web_report(r: dict) -> str:
    s = r["samples"]
    first, last = s[0], s[-1]
    peak = max(x["rss_mb"] for x in s)
    rate = [round(f / r["elapsed_s"], 2) for f in last["frames"]]
    return "\n".join(
        [
            f"mfvan web, {r['cameras']} cameras at {r['fps']:g} fps previewed for "
            f"{r['minutes']:g} min on {r['machine']} ({r['cores']} cores):",
            f"  the view's resident memory: {first['rss_mb']} MB at {first['t_s']} s, "
            f"{last['rss_mb']} MB at {last['t_s']} s, at most {peak} MB",
            f"  preview frames per second received, per camera: {rate}; live events "
            f"received: {last['events']}; the view's CPU: {last['web_cpu_s']} s in all",
            f"  spot stage CPU per frame: {r['spot_ms_per_frame_unwatched']} ms unwatched, "
            f"{r['spot_ms_per_frame_watched']} ms with every camera watched",
        ]
    )
