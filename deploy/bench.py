"""`mfvan bench`: speed measured side by side, never asserted in tests.

`bench model` builds MFVAN from a config (random weights: speed does not depend on their
values), counts parameters and FLOPs, and times one forward pass of an (onset, apex)
batch with eager PyTorch and with ONNX Runtime on the exported graph, in the same process
and on the same inputs, alternating engines so that the machine's noise hits both. It
reports p50 and p99 of the batch latency and the per-pair latency (batch latency / batch
size) for batch 1 and 8. Warm-up runs (and ONNX export) are outside the timings.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def cpu_name() -> str:
    """The CPU's model name, to name the machine a figure came from."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def count_flops(model, batch: int = 1) -> int:
    """Floating-point operations of one forward pass (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    x = torch.zeros(batch, cfg.in_chans, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, x)
    return counter.get_total_flops()


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def bench_model(config_name: str, batches=(1, 8), runs: int = 200, warmup: int = 20) -> dict:
    """Latency of eager torch and ONNX Runtime for one config; a dict of results."""
    from mfvan.deploy.export import export_onnx, onnx_session
    from mfvan.model.mfvan import CONFIGS, MFVAN

    cfg = CONFIGS[config_name]
    torch.manual_seed(0)
    model = MFVAN(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    inference_params = (
        params - sum(p.numel() for p in model.teacher.parameters())
        if (model.teacher is not None)
        else params
    )
    with tempfile.TemporaryDirectory() as tmp:
        session = onnx_session(export_onnx(model, Path(tmp) / "model.onnx"))
    results = {
        "config": config_name,
        "params": params,
        "inference_params": inference_params,
        "flops_per_pair": count_flops(model, 1),
        "machine": f"{platform.machine()} {cpu_name()}, {torch.get_num_threads()} torch threads",
        "rows": [],
    }
    rng = np.random.default_rng(0)
    for batch in batches:
        shape = (batch, cfg.in_chans, cfg.image_size, cfg.image_size)
        onset = rng.standard_normal(shape).astype(np.float32)
        apex = rng.standard_normal(shape).astype(np.float32)
        t_onset, t_apex = torch.from_numpy(onset), torch.from_numpy(apex)
        feed = {"onset": onset, "apex": apex}

        def run_torch(a=t_onset, b=t_apex):
            with torch.inference_mode():
                model(a, b)

        def run_onnx(f=feed):
            session.run(None, f)

        engines = {"torch eager": run_torch, "onnxruntime": run_onnx}
        for fn in engines.values():
            for _ in range(warmup):
                fn()
        times = {name: [] for name in engines}
        for _ in range(runs):
            for name, fn in engines.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        for name, samples in times.items():
            p50, p99 = _percentiles(samples)
            results["rows"].append(
                {
                    "engine": name,
                    "batch": batch,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "per_pair_p50_ms": p50 / batch,
                }
            )
    return results


def format_model_report(r: dict) -> str:
    lines = [
        f"MFVAN '{r['config']}': {r['params'] / 1e6:.3f} M parameters "
        f"({r['inference_params'] / 1e6:.3f} M at inference, without the teacher), "
        f"{r['flops_per_pair'] / 1e6:.1f} MFLOPs per (onset, apex) pair",
        f"machine: {r['machine']}",
        f"{'engine':<14}{'batch':>6}{'p50 ms':>10}{'p99 ms':>10}{'per pair p50 ms':>18}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['engine']:<14}{row['batch']:>6}{row['p50_ms']:>10.2f}"
            f"{row['p99_ms']:>10.2f}{row['per_pair_p50_ms']:>18.2f}"
        )
    by = {(row["engine"], row["batch"]): row["p50_ms"] for row in r["rows"]}
    for batch in sorted({row["batch"] for row in r["rows"]}):
        ratio = by[("torch eager", batch)] / by[("onnxruntime", batch)]
        lines.append(f"batch {batch}: onnxruntime is {ratio:.2f}x the speed of torch eager (p50)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- flow


def synth_flow_pairs(
    n: int = 32, size: int = 128, seed: int = 1, config: str = "standard", codec: str | None = None
) -> list:
    """(onset crop, apex crop, true flow) at the onset and apex of SynthME clips of preset
    `config` (`photo`: photographic identities): grey uint8 face crops (area-resized) and
    the renderer's exact flow, resized and rescaled with them. With `codec` (a key of
    `synth.ENCODINGS`), the clip's frames from onset to apex are encoded as a camera would
    and the pair is taken from the decoded video. Seed 1: the flow's parameters were chosen
    on seed 0."""
    import tempfile

    import av
    import cv2

    from mfvan.model.data import synth

    cfg = synth.CONFIGS[config]
    emotions = synth.EMOTIONS_5
    out = []
    for i in range(n):
        subject = i % cfg.subjects + 1
        r = synth.SubjectRenderer(subject, seed, cfg)
        clip, timeline = synth.make_clip(r, subject, i, seed, emotion=emotions[i % len(emotions)])
        e = clip.expression
        a, b = timeline.state(e.onset), timeline.state(e.apex)
        p = r.placement
        half = int(0.55 * p.h)
        ys = slice(int(p.cy) - half, int(p.cy) + half)
        xs = slice(int(p.cx) - half, int(p.cx) + half)

        def crop(img, ys=ys, xs=xs):
            return cv2.resize(img[ys, xs], (size, size), interpolation=cv2.INTER_AREA)

        if codec is None:
            grey = [cv2.cvtColor(r.render(s), cv2.COLOR_RGB2GRAY) for s in (a, b)]
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = f"{tmp}/clip.{synth.ENCODINGS[codec].ext}"
                frames = (r.render(timeline.state(t)) for t in range(e.onset, e.apex + 1))
                synth.encode_video(path, frames, cfg.fps, codec, cfg.frame_size)
                with av.open(path) as container:
                    decoded = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
            grey = [decoded[0], decoded[-1]]
        flow = crop(r.forward_flow(a, b)) * (size / (2 * half))
        out.append((crop(grey[0]), crop(grey[1]), flow))
    return out


def face_mask(size: int) -> np.ndarray:
    """The face region of `synth_flow_pairs` crops: an ellipse inside the face outline."""
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    return ((xx - c) / (0.31 * size)) ** 2 + ((yy - c) / (0.43 * size)) ** 2 < 1


def flow_methods() -> dict:
    """Name -> callable(first uint8, second uint8) -> (H, W, 2) flow, ours and OpenCV's."""
    import cv2

    from mfvan.kernels.flow import dense_flow

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return {
        "mfvan (Numba)": dense_flow,
        "OpenCV DIS medium": lambda a, b: dis.calc(a, b, None),
        "OpenCV Farneback": lambda a, b: cv2.calcOpticalFlowFarneback(
            a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0
        ),
        "zero flow": lambda a, b: np.zeros((*a.shape, 2), np.float32),
    }


# what `bench flow` measures on: SynthME's parametric faces (lossless), photographic
# identities (lossless), and photographic identities through H.264 CRF 23 as a camera codes
FLOW_SETS = {
    "SynthME": ("standard", None),
    "photo": ("photo", None),
    "photo H.264 CRF 23": ("photo", "h264-crf23"),
}


def bench_flow(sizes=(64, 128, 256), n: int = 32, rounds: int = 5, sets=tuple(FLOW_SETS)) -> dict:
    """EPE on the face against SynthME's exact flow, and time per pair, for each set, size
    and method, on one thread, methods interleaved round by round."""
    import cv2

    from mfvan.kernels.flow import warm_up

    cv2.setNumThreads(1)
    warm_up()
    methods = flow_methods()
    rows = []
    for set_name in sets:
        config, codec = FLOW_SETS[set_name]
        for size in sizes:
            pairs = synth_flow_pairs(n, size, config=config, codec=codec)
            mask = face_mask(size)
            times = {name: [] for name in methods}
            epe = {
                name: float(
                    np.mean(
                        [np.linalg.norm(fn(a, b) - g, axis=-1)[mask].mean() for a, b, g in pairs]
                    )
                )
                for name, fn in methods.items()
            }
            for _ in range(rounds):
                for name, fn in methods.items():
                    start = time.perf_counter()
                    for a, b, _ in pairs:
                        fn(a, b)
                    times[name].append((time.perf_counter() - start) / len(pairs))
            for name in methods:
                rows.append(
                    {
                        "set": set_name,
                        "size": size,
                        "method": name,
                        "epe": epe[name],
                        "ms": 1e3 * min(times[name]),
                    }
                )
    return {"machine": cpu_name(), "pairs": n, "rows": rows}


def format_flow_report(r: dict) -> str:
    lines = [
        f"dense flow on {r['pairs']} onset/apex pairs per set and size (seed 1, held out), "
        f"one thread; machine: {r['machine']}",
        f"{'set':<20}{'size':>5}  {'method':<20}{'EPE px':>9}{'ms/pair':>10}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['set']:<20}{row['size']:>5}  {row['method']:<20}{row['epe']:>9.4f}"
            f"{row['ms']:>10.2f}"
        )
    by = {(row["set"], row["size"], row["method"]): row for row in r["rows"]}
    for set_name, size in dict.fromkeys((row["set"], row["size"]) for row in r["rows"]):
        ours = by[(set_name, size, "mfvan (Numba)")]
        for ref in ("OpenCV DIS medium", "OpenCV Farneback"):
            other = by[(set_name, size, ref)]
            lines.append(
                f"{set_name}, {size} px: against {ref}: EPE {ours['epe'] / other['epe']:.2f}x, "
                f"speed {other['ms'] / ours['ms']:.2f}x"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- spotter


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
        p50, p99 = _percentiles(per_frame)
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


# ----------------------------------------------------------------------------- backends


def backend_candidates() -> dict:
    """Name -> factory(model) of every backend that can run on this machine."""
    import importlib.util

    from mfvan.deploy import backends as b

    out = {
        "torch eager (cpu)": lambda m: b.TorchBackend(m),
        "torch.compile (cpu)": lambda m: b.TorchBackend(m, compile=True),
        "onnxruntime": lambda m: b.OnnxRuntimeBackend(m),
    }
    if torch.cuda.is_available():
        out.update(
            {
                "torch cuda fp32": lambda m: b.TorchBackend(m, device="cuda"),
                "torch cuda fp16": lambda m: b.TorchBackend(m, device="cuda", precision="fp16"),
                "torch cuda fp16 + CUDA graphs": lambda m: b.TorchBackend(
                    m, device="cuda", precision="fp16", cuda_graphs=True
                ),
            }
        )
        if importlib.util.find_spec("torch_tensorrt"):
            out["tensorrt fp16"] = lambda m: b.TensorRTBackend(m, precision="fp16")
    return out


def bench_backends(
    config_name: str = "demo", batches=(1, 8, 32), runs: int = 100, warmup: int = 10
) -> dict:
    """Each backend as the recognizer calls it (uint8 crops in, probabilities out, the
    network's preprocessing included), per batch size: p50 and p99 per pair, pairs/s.
    Backends alternate run by run, so that the machine's noise hits them alike."""
    from mfvan.model.mfvan import CONFIGS, MFVAN

    torch.manual_seed(0)
    model = MFVAN(CONFIGS[config_name]).eval()
    made = {name: make(model) for name, make in backend_candidates().items()}
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        onset = rng.integers(0, 256, (batch, 128, 128), dtype=np.uint8)
        apex = rng.integers(0, 256, (batch, 128, 128), dtype=np.uint8)
        for backend in made.values():
            for _ in range(warmup):
                backend(onset, apex)
        times = {name: [] for name in made}
        for _ in range(runs):
            for name, backend in made.items():
                start = time.perf_counter()
                backend(onset, apex)
                times[name].append(time.perf_counter() - start)
        for name, samples in times.items():
            p50, p99 = _percentiles(samples)
            rows.append(
                {
                    "backend": name,
                    "batch": batch,
                    "per_pair_p50_ms": p50 / batch,
                    "per_pair_p99_ms": p99 / batch,
                    "pairs_per_s": batch / (p50 / 1e3),
                }
            )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return {
        "config": config_name,
        "machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads; {device}",
        "rows": rows,
    }


def format_backends_report(r: dict) -> str:
    lines = [
        f"MFVAN '{r['config']}' per backend, uint8 crops in (preprocessing included); "
        f"machine: {r['machine']}",
        f"{'backend':<32}{'batch':>6}{'p50 ms/pair':>13}{'p99 ms/pair':>13}{'pairs/s':>10}"
        f"{'x eager':>9}",
    ]
    eager = {row["batch"]: row["per_pair_p50_ms"] for row in r["rows"]
             if row["backend"].startswith("torch eager")}  # fmt: skip
    for row in r["rows"]:
        lines.append(
            f"{row['backend']:<32}{row['batch']:>6}{row['per_pair_p50_ms']:>13.2f}"
            f"{row['per_pair_p99_ms']:>13.2f}{row['pairs_per_s']:>10.0f}"
            f"{eager[row['batch']] / row['per_pair_p50_ms']:>9.2f}"
        )
    return "\n".join(lines)
