"""`mfvan bench pipeline`: the live pipeline's transport and its end-to-end latency.

Transport: 640 x 480 RGB frames (921,600 bytes each) pushed from one process to another
over `ipc://` and `tcp://127.0.0.1`, two ways side by side in the same run, rounds
alternating so that the machine's noise hits both:

- bare pyzmq: PUSH/PULL, `send_multipart([frame], copy=False)`, `recv_multipart(copy=False)`;
- mfvan's protocol, as the stages use it: `protocol.send` (msgpack header, non-blocking
  send that waits for room), `protocol.recv_parts` and `protocol.decode` (header and
  buffer validation, a read-only NumPy view on the received frame) and the Prometheus
  counters a stage updates.

Both use the stages' high-water mark. A round times `frames` messages from the first
receipt to the last (process start and connection are outside the timing). Frames/s are
the median round; the ratio is the median of each round's ratio to the other way's round
beside it (a paired comparison: this shared machine's speed drifts twofold over minutes).

End to end: `mfvan run` as a user runs it (one ingest process per stream, one spot process
per `streams_per_spot` streams, one recognizer on ONNX Runtime), fed by cameras of one of
three kinds (`SOURCES`):
- `rtsp` (the default): what users point it at. H.264 files of SynthME's camera (640 x 480,
  CRF 23, no B-frames, a key frame a second; `cameras.camera_file`) served by GStreamer's
  RTSP server over loopback, one mount per camera, each at its own frame rate;
- `file`: the same files, played at their native rate (`--realtime`);
- `synth`: `synth://` cameras rendered in the ingest process (which then pays for the
  rendering).
The cameras hold 8 micro-expressions per 10 s instead of 3, for more latency samples.
A subscriber in this process watches the events. After a warm-up, a measurement window:
events that arrive in it give the latency from the capture of the frame that confirmed the
apex (`t_capture`) to the event's arrival at the subscriber, and the stages' `/metrics`,
scraped at the window's start and end, give frames captured, frames dropped (any stage,
any reason) and restarts; /proc gives each stage's CPU time. A run of N streams is
kept up with when no frame was dropped, no stage restarted and every stream ran at its
frame rate (98% or more), and sustained when the p99 latency met the goal (50 ms) as well.
The runs go through the stream counts given, in order, until one is not kept up with (a
count kept up with but above the latency goal is a box's capacity with more latency: the
report gives both).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mfvan.deploy.bench import stage_cpu
from mfvan.stream.metrics import fetch

FRAME_SHAPE = (480, 640, 3)
HWM = 64  # the stages' high-water mark (stream/sockets.py)
GOAL_P99_MS = 50.0
MICRO = 8  # micro-expressions per 10 s of each camera: more latency samples per second


# ----------------------------------------------------------------------------- transport


def _produce(endpoint: str, way: str, frames: int, ready) -> None:
    """Child process: bind a PUSH socket and send `frames` frames, `way` = bare | mfvan."""
    import zmq

    from mfvan.stream.messages import Frame
    from mfvan.stream.metrics import Metrics

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.bind(endpoint)
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8) for _ in range(8)]
    metrics = Metrics("ingest")
    # as the ingest stage counts: children bound once
    counted = metrics.frames_in.labels("ingest", "cam")
    sent_out = metrics.frames_out.labels("ingest", "cam")
    full = metrics.dropped.labels("ingest", "cam", "hwm")
    ready.set()
    for i in range(frames):
        image = pool[i % len(pool)]
        if way == "bare":
            sock.send_multipart([image], copy=False)
            continue
        counted.inc()
        frame = Frame(
            stream="cam", seq=i, image=image, index=i, t_capture=time.time_ns()
        )  # as ingest sends it
        frame.t_ingest = time.time_ns()
        while not frame.send(sock, wait_ms=1000):
            full.inc()
        sent_out.inc()
    sock.close(linger=-1)
    ctx.term()


def _consume(endpoint: str, way: str, frames: int) -> float:
    """Receive `frames` frames; seconds from the first receipt to the last."""
    import zmq

    from mfvan.stream import protocol
    from mfvan.stream.messages import Frame
    from mfvan.stream.metrics import Metrics

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.connect(endpoint)
    metrics = Metrics("spot")
    counted = {}  # as the spot stage counts: each stream's child bound once
    first = None
    for _ in range(frames):
        if way == "bare":
            sock.recv_multipart(copy=False)
        else:
            msg = Frame.from_message(protocol.decode(protocol.recv_parts(sock)))
            assert msg.image.shape == FRAME_SHAPE
            stream = msg.stream
            if stream not in counted:
                counted[stream] = metrics.frames_in.labels("spot", stream)
            counted[stream].inc()
        if first is None:
            first = time.perf_counter()
    elapsed = time.perf_counter() - first
    sock.close(linger=0)
    return elapsed


def bench_transport(frames: int = 2000, rounds: int = 15) -> dict:
    """Frames/s of bare pyzmq and of mfvan's protocol over ipc:// and loopback tcp://."""
    ctx = mp.get_context("spawn")
    folder = tempfile.mkdtemp(prefix="mfvan-bench-")
    rows = []
    for transport in ("ipc", "tcp"):
        times = {"bare": [], "mfvan": []}
        for r in range(rounds):
            for way in ("bare", "mfvan") if r % 2 == 0 else ("mfvan", "bare"):
                if transport == "ipc":
                    endpoint = f"ipc://{folder}/{way}-{r}.ipc"
                else:
                    endpoint = f"tcp://127.0.0.1:{_free_port()}"
                ready = ctx.Event()
                producer = ctx.Process(target=_produce, args=(endpoint, way, frames, ready))
                producer.start()
                ready.wait(60)
                times[way].append(_consume(endpoint, way, frames))
                producer.join(60)
        for way in ("bare", "mfvan"):
            fps = (frames - 1) / float(np.median(times[way]))
            rows.append(
                {
                    "transport": transport,
                    "way": way,
                    "fps": fps,
                    "gbps": fps * int(np.prod(FRAME_SHAPE)) / 1e9,
                    "rounds_fps": [(frames - 1) / t for t in times[way]],
                }
            )
    return {"frames": frames, "rounds": rounds, "rows": rows}


def paired_ratio(ours: dict, bare: dict) -> float:
    """The median, over rounds, of ours / bare in the same round: the two ran back to
    back, so the machine's slow drifts cancel (this shared VM's rounds vary twofold)."""
    return float(np.median(np.divide(ours["rounds_fps"], bare["rounds_fps"])))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- end to end


def _scrape(ports: list[int]) -> dict[str, float]:
    """Sums over every stage's /metrics of the series the verdict needs."""
    names = {
        "mfvan_frames_dropped_total": "dropped",
        "mfvan_restarts_total": "restarts",
    }
    totals = {"dropped": 0.0, "restarts": 0.0, "captured": {}}
    for port in ports:
        text = fetch(f"http://127.0.0.1:{port}/metrics", timeout_s=5)
        if text is None:  # not up, or stopping
            continue
        for line in text.splitlines():
            name = line.split("{", 1)[0]
            if name in names:
                totals[names[name]] += float(line.split()[-1])
            elif name == "mfvan_frames_out_total" and 'stage="ingest"' in line:
                stream = line.split('stream="', 1)[1].split('"', 1)[0]
                totals["captured"][stream] = float(line.split()[-1])
    return totals


SOURCES = ("rtsp", "file", "synth")  # the kinds of camera the end-to-end runs take


@dataclass
class PipelineRun:
    """What `mfvan bench pipeline` runs: `mfvan run` with each number of cameras in
    `counts` (default 1 to `max_streams`) of the kind `source` (`SOURCES`; the H.264 files
    made once under `data`) at `fps`, measured over `window_s` after `warmup_s`, with
    `backend` and `streams_per_spot`; before them the transport comparison (`frames` a
    round, `rounds` rounds; none with 0). Ports from `base_port`."""

    max_streams: int = 4
    fps: float = 200.0
    warmup_s: float = 10.0
    window_s: float = 30.0
    frames: int = 2000
    rounds: int = 15
    backend: str = "onnxruntime"
    source: str = "rtsp"
    counts: list[int] | None = None
    streams_per_spot: int = 1
    data: Path = Path("runs/bench/cameras")
    base_port: int = 9301


def run_end_to_end(sources: list[str], run: PipelineRun) -> dict:
    """One `mfvan run` of the cameras `sources` (URLs or files, played at their rate when
    `run.source` is "file"); latency, drops and CPU over the window."""
    from mfvan.stream import subscribe

    runtime = Path(tempfile.mkdtemp(prefix="mfvan-bench-"))
    cmd = [sys.executable, "-m", "mfvan.deploy.cli", "run", "--backend", run.backend]
    cmd += ["--runtime-dir", str(runtime), "--metrics-base-port", str(run.base_port)]
    cmd += ["--streams-per-spot", str(run.streams_per_spot)]
    cmd += ["--overcommit"]  # a benchmark looks for the limit: it may plan past it
    cmd += ["--realtime"] if run.source == "file" else []
    for source in sources:
        cmd += ["--source", source]
    ports = [run.base_port - 1, *range(run.base_port, run.base_port + 2 * len(sources) + 1)]
    env = {**os.environ, "MFVAN_LOG": "WARNING"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with subscribe(f"ipc://{runtime}/events.ipc", timeout_s=0.5) as sub:
            seen = _window(sub, proc, ports, run)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return _summary(seen, len(sources), run)


def _window(sub, proc, ports: list[int], run: PipelineRun) -> dict:
    """Once the cameras' frames flow and `warmup_s` has passed: each event's latency
    over `window_s`, and the stages' counters and CPU before and after it."""
    deadline = time.monotonic() + 180
    while not _scrape(ports)["captured"] and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mfvan run exited: {proc.stderr.read().decode()}")
        time.sleep(0.5)
    end_warmup = time.monotonic() + run.warmup_s
    while time.monotonic() < end_warmup:
        for _ in sub:
            break
    seen = {"latency": [], "apex_latency": [], "arrivals": []}
    before, start, cpu0 = _scrape(ports), time.monotonic(), stage_cpu(proc.pid)
    while time.monotonic() < start + run.window_s:
        for event in sub:
            now = time.time_ns()
            seen["latency"].append((now - event.times["t_capture"]) / 1e6)
            seen["apex_latency"].append((now - event.times["t_apex"]) / 1e6)
            seen["arrivals"].append(time.monotonic() - start)
            break
    after, elapsed, cpu1 = _scrape(ports), time.monotonic() - start, stage_cpu(proc.pid)
    seen.update(before=before, after=after, elapsed=elapsed, cpu0=cpu0, cpu1=cpu1)
    return seen


def _summary(seen: dict, streams: int, run: PipelineRun) -> dict:
    before, after, elapsed = seen["before"], seen["after"], seen["elapsed"]
    latency, apex_latency = seen["latency"], seen["apex_latency"]
    cpu0, cpu1 = seen["cpu0"], seen["cpu1"]
    rates = [(after["captured"].get(s, 0) - n) / elapsed for s, n in before["captured"].items()]
    p50, p99 = np.percentile(latency, [50, 99]) if latency else (float("nan"),) * 2
    dropped = after["dropped"] - before["dropped"]
    restarts = after["restarts"] - before["restarts"]
    fps = run.fps
    kept_up = dropped == 0 and restarts == 0 and len(rates) == streams and min(rates) >= 0.98 * fps
    sustained = kept_up and bool(latency) and p99 <= GOAL_P99_MS
    return {
        "streams": streams,
        "streams_per_spot": run.streams_per_spot,
        "fps": fps,
        "window_s": elapsed,
        "events": len(latency),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "max_ms": float(max(latency)) if latency else float("nan"),
        "apex_p50_ms": float(np.percentile(apex_latency, 50)) if apex_latency else float("nan"),
        "min_fps": min(rates) if rates else 0.0,
        "dropped": dropped,
        "restarts": restarts,
        "kept_up": kept_up,
        "sustained": sustained,
        "latency_ms": latency,  # each event's, in arrival order (for the plots)
        "arrival_s": seen["arrivals"],
        # cores busy per stage over the window (ingest and spot: all streams together)
        "cores": {k: (cpu1[k] - cpu0.get(k, 0.0)) / elapsed for k in cpu1},
    }


def bench_pipeline(run: PipelineRun) -> dict:
    """The transport comparison, then `mfvan run` with each number of cameras in
    `run.counts` until one is not kept up with (`PipelineRun`)."""
    from contextlib import nullcontext

    from mfvan.deploy.bench import cameras, cpu_name

    if run.source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {run.source!r}")
    counts = run.counts or list(range(1, run.max_streams + 1))
    transport = bench_transport(run.frames, run.rounds) if run.rounds else None
    most, fps = max(counts, default=0), run.fps
    if run.source == "synth" or not most:  # (no cameras: the transport comparison only)
        urls = [f"synth://?fps={fps:g}&seed={11 + i}&micro={MICRO}" for i in range(most)]
        server = nullcontext()
    else:
        files = [cameras.camera_file(run.data, 11 + i, fps) for i in range(most)]
        urls = [str(f) for f in files]
        rtsp = run.source == "rtsp"
        server = cameras.RtspServer(run.base_port - 2, files) if rtsp else nullcontext()
    runs = []
    with server as served:
        if served is not None:
            urls = served.urls
        for n in counts:
            runs.append(run_end_to_end(urls[:n], run))
            if not runs[-1]["kept_up"]:
                break
    return {
        "machine": cpu_name(),
        "cores": os.cpu_count(),
        "backend": run.backend,
        "source": run.source,
        "transport": transport,
        "runs": runs,
    }


def format_pipeline_report(r: dict) -> str:
    lines = [f"machine: {r['machine']}, {r['cores']} cores"]
    if r.get("transport"):
        lines += _transport_lines(r["transport"])
    if not r["runs"]:
        return "\n".join(lines)
    source = {
        "rtsp": "H.264 640x480 CRF 23 cameras over RTSP (GStreamer's server, loopback)",
        "file": "H.264 640x480 CRF 23 files played at their rate",
        "synth": "synth:// cameras (rendered in ingest)",
    }[r.get("source", "synth")]
    per_spot = r["runs"][0].get("streams_per_spot", 1)
    lines += [
        "",
        f"end to end: `mfvan run` with N {source} at {r['runs'][0]['fps']:g} fps, "
        f"{per_spot} stream(s) per spot process, {r['backend']}; latency from the capture "
        "of the frame that confirmed the apex to the event at a subscriber (goal p99 <= "
        f"{GOAL_P99_MS:g} ms, no drops)",
        f"{'streams':>7}{'window s':>10}{'events':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        f"{'apex->event p50':>17}{'min fps':>9}{'dropped':>9}{'restarts':>9}  kept up  "
        "sustained",
    ]
    for run in r["runs"]:
        lines.append(
            f"{run['streams']:>7}{run['window_s']:>10.0f}{run['events']:>8}{run['p50_ms']:>8.1f}"
            f"{run['p99_ms']:>8.1f}{run['max_ms']:>8.1f}{run['apex_p50_ms']:>17.0f}"
            f"{run['min_fps']:>9.1f}{run['dropped']:>9.0f}{run['restarts']:>9.0f}  "
            f"{'yes' if run['kept_up'] else 'no':<9}"
            f"{'yes' if run['sustained'] else 'no'}"
        )
    lines.append("cores busy per stream (ingest, spot: all streams' processes together / N):")
    for run in r["runs"]:
        c, n = run["cores"], run["streams"]
        frame_ms = 1000 / run["fps"]
        lines.append(
            f"  {n} stream(s): ingest {c.get('ingest', 0) / n:.2f} "
            f"({c.get('ingest', 0) / n * frame_ms:.2f} ms/frame), spot "
            f"{c.get('spot', 0) / n:.2f} ({c.get('spot', 0) / n * frame_ms:.2f} ms/frame), "
            f"recognize {c.get('recognize', 0):.2f} in all"
        )
    ok = [run["streams"] for run in r["runs"] if run["sustained"]]
    kept = [run["streams"] for run in r["runs"] if run["kept_up"]]
    fps = f"{r['runs'][0]['fps']:g}"
    lines.append(
        f"streams at {fps} fps this box keeps up with (no drops, >= 98% of the rate): "
        f"{max(kept) if kept else 0}; sustains (p99 <= {GOAL_P99_MS:g} ms as well): "
        f"{max(ok) if ok else 0}"
    )
    return "\n".join(lines)


def _transport_lines(t: dict) -> list[str]:
    lines = [
        f"transport: {t['frames']} frames of 640x480 RGB per round, {t['rounds']} rounds each "
        "way, alternating; producer and consumer in two processes",
        f"{'endpoint':<10}{'way':<26}{'frames/s':>10}{'GB/s':>8}   rounds (min - max)",
    ]
    by = {(row["transport"], row["way"]): row for row in t["rows"]}
    for row in t["rows"]:
        way = "bare pyzmq (copy=False)" if row["way"] == "bare" else "mfvan protocol + counters"
        spread = f"{min(row['rounds_fps']):.0f} - {max(row['rounds_fps']):.0f}"
        lines.append(
            f"{row['transport']:<10}{way:<26}{row['fps']:>10.0f}{row['gbps']:>8.2f}   {spread}"
        )
    for transport in ("ipc", "tcp"):
        ratio = paired_ratio(by[(transport, "mfvan")], by[(transport, "bare")])
        lines.append(
            f"{transport}: mfvan's protocol carries {ratio:.0%} of bare pyzmq's frames/s "
            "(median over rounds of each round's ratio to its neighbour)"
        )
    return lines


def plot_pipeline(r: dict, folder: Path) -> list[Path]:
    """PNG plots of a `bench_pipeline` result, for a look without Grafana: the latency
    histogram of each run, and each run's latency over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs = [run for run in r["runs"] if run["latency_ms"]]
    written = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        ax.hist(run["latency_ms"], bins=30, alpha=0.6, label=f"{run['streams']} stream(s)")
    ax.axvline(GOAL_P99_MS, color="k", linestyle="--", label=f"goal p99 {GOAL_P99_MS:g} ms")
    ax.set(
        xlabel="confirming frame's capture -> event at a subscriber (ms)",
        ylabel="events",
        title=f"mfvan run, {r['backend']}, {r['machine']}",
    )
    ax.set_xscale("log")
    ax.legend()
    fig.tight_layout()
    written.append(folder / "pipeline-latency-histogram.png")
    fig.savefig(written[-1], dpi=100)
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        ax.plot(
            run["arrival_s"], run["latency_ms"], "o-", ms=3, label=f"{run['streams']} stream(s)"
        )
    ax.axhline(GOAL_P99_MS, color="k", linestyle="--", label=f"goal p99 {GOAL_P99_MS:g} ms")
    ax.set(
        xlabel="seconds into the measured window",
        ylabel="latency (ms)",
        yscale="log",
        title="each event's latency over time",
    )
    ax.legend()
    fig.tight_layout()
    written.append(folder / "pipeline-latency-series.png")
    fig.savefig(written[-1], dpi=100)
    if r.get("transport"):
        t = r["transport"]["rows"]
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{row['transport']} {row['way']}" for row in t]
        ax.boxplot([row["rounds_fps"] for row in t], tick_labels=labels)
        ax.set(
            ylabel="640x480 frames/s",
            title="transport: each round (mfvan's protocol vs bare pyzmq)",
        )
        fig.tight_layout()
        written.append(folder / "pipeline-transport.png")
        fig.savefig(written[-1], dpi=100)
    plt.close("all")
    return written
