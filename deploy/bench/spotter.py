"""`mfvan bench spotter`: the spotter's frames per second on one core (flow included),
with our flow and with OpenCV's in its place, and the latency from apex to emission."""

from __future__ import annotations

import numpy as np
import torch

from mfvan.deploy.bench import cpu_name, percentiles
from mfvan.deploy.bench.flow import flow_methods


def synth_frames(fps: float = 200.0, seconds: float = 10.0, subject: int = 1):
    """A SynthME live stream's grey frames with their media times, and its
    micro-expressions."""
    from dataclasses import replace

    from mfvan.kernels.faces import to_grey
    from mfvan.model.data import synth

    cfg = replace(synth.CONFIGS["standard"], fps=fps)
    stream = synth.SynthStream(cfg, subject=subject, seed=1)
    frames = [stream.frame(t) for t in range(int(round(seconds * fps)))]
    frames = [(to_grey(f.image), f.timestamp_ns) for f in frames]
    micro = [e for e in stream.expressions_until(len(frames)) if e.kind == "micro"]
    return frames, micro


def bench_spotter(fps: float = 200.0, seconds: float = 10.0, size: int = 128) -> dict:
    """Frames per second of the spotter (flow included) on one core, with our Numba flow
    and, side by side on the same frames, with OpenCV's DIS and Farneback in its place; and
    the latency from apex to emitted interval. Frames go through `FaceSpotter`, the same
    building block as the live stage; the time per frame is the spotter's part of each
    push (`FaceSpotter.spot_seconds`), tracking and cropping being the same for all."""
    import cv2

    from mfvan.kernels.facespot import FaceSpotter
    from mfvan.kernels.spotter import warm_up

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    warm_up()
    frames, micro = synth_frames(fps, seconds)
    rows = []
    for name, fn in flow_methods().items():
        if name == "zero flow":
            continue
        flow_fn = None if name.startswith("mfvan") else _uint8_flow(fn)
        spots = FaceSpotter(size=size, flow_fn=flow_fn)
        per_frame, intervals = [], []
        for index, (grey, ns) in enumerate(frames):
            intervals += spots.push(grey, index, ns)
            if spots.has_face:
                per_frame.append(spots.spot_seconds)
        p50, p99 = percentiles(per_frame)
        rows.append(
            {
                "flow": name,
                "fps": len(per_frame) / sum(per_frame),
                "p50_ms": p50,
                "p99_ms": p99,
                "intervals": len(intervals),
                "latency_ms": [i.latency_ns / 1e6 for i in intervals],
            }
        )
    return {
        "machine": cpu_name(),
        "fps_in": fps,
        "seconds": seconds,
        "size": size,
        "micro": len(micro),
        "rows": rows,
    }


def bench_faces(fps: float = 30.0, seconds: float = 6.0) -> dict:
    """What a second face costs: `FaceSpotter.push` timed whole (face search, tracking,
    cropping, spotting) per frame on one core, on SynthME's `two-still` scene (640 x 480,
    held-out morphs, two faces side by side) and on the same scene with its first person
    alone, with up to 4 faces tracked; and that one person with the one-face tracker
    (`max_faces=1`, the path every spotting figure was measured on), side by side on the
    same frames. Only frames where every person is in view are counted."""
    import time
    from dataclasses import replace

    import cv2

    from mfvan.kernels.faces import to_grey
    from mfvan.kernels.facespot import FaceSpotter
    from mfvan.kernels.spotter import warm_up
    from mfvan.model.data import scenes, synth

    cv2.setNumThreads(1)
    warm_up()
    config = replace(synth.CONFIGS["morph-heldout"], fps=fps)
    both = scenes.layouts(seconds)["two-still"]
    runs = (
        ("1 face, max_faces 1", replace(both, people=both.people[:1]), 1),
        ("1 face, max_faces 4", replace(both, people=both.people[:1]), 4),
        ("2 faces, max_faces 4", both, 4),
    )
    rows = []
    for name, scene, max_faces in runs:
        stream = scenes.SceneStream(config, scene, seed=11)
        frames = [to_grey(f.image) for f in (stream.frame(t) for t in range(stream.frames()))]
        spotter = FaceSpotter(max_faces=max_faces)
        per_frame = []
        for index, grey in enumerate(frames):
            started = time.perf_counter()
            spotter.push(grey, index, round(index * 1e9 / fps))
            spent = time.perf_counter() - started
            if len(spotter.tracker.in_view) == len(scene.people):
                per_frame.append(spent)
        p50, p99 = percentiles(per_frame)
        rows.append(
            {
                "run": name,
                "faces": len(scene.people),
                "frames": len(per_frame),
                "ms": 1e3 * float(np.mean(per_frame)) if per_frame else float("nan"),
                "p50_ms": p50,
                "p99_ms": p99,
            }
        )
    return {"machine": cpu_name(), "fps_in": fps, "seconds": seconds, "rows": rows}


def format_faces_report(r: dict) -> str:
    lines = [
        f"FaceSpotter.push whole (search, tracking, crops, spotting) on {r['seconds']:g} s of "
        f"SynthME's two-still scene at {r['fps_in']:g} fps, one core; machine: {r['machine']}",
        f"{'run':<24}{'frames':>8}{'ms/frame':>10}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['run']:<24}{row['frames']:>8}{row['ms']:>10.2f}{row['p50_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}"
        )
    one_old, one, two = (row["ms"] for row in r["rows"])
    lines.append(
        f"the second face costs {(two - one) / one:.2f}x the first; one face with up to 4 "
        f"tracked costs {one / one_old:.2f}x the one-face tracker"
    )
    return "\n".join(lines)


def _uint8_flow(fn):
    def flow(first, second):
        a = np.clip(first, 0, 255).astype(np.uint8)
        b = np.clip(second, 0, 255).astype(np.uint8)
        return fn(a, b)

    return flow


def format_spotter_report(r: dict) -> str:
    lines = [
        f"spotter on {r['seconds']:g} s of a SynthME stream at {r['fps_in']:g} fps, "
        f"{r['size']} px crops, one core ({r['micro']} micro-expressions in it); "
        f"machine: {r['machine']}",
        f"{'flow':<20}{'frames/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'spotted':>9}"
        f"{'apex->emit ms (mean, max)':>28}",
    ]
    for row in r["rows"]:
        lat = row["latency_ms"]
        lat_text = f"{np.mean(lat):.0f}, {np.max(lat):.0f}" if lat else "-"
        lines.append(
            f"{row['flow']:<20}{row['fps']:>10.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['intervals']:>9}{lat_text:>28}"
        )
    ours = r["rows"][0]
    for row in r["rows"][1:]:
        lines.append(
            f"mfvan flow is {ours['fps'] / row['fps']:.2f}x the spotter's speed with {row['flow']}"
        )
    return "\n".join(lines)
