"""`mfvan bench flow`: dense optical flow, EPE against SynthME's exact flow and time per
pair, `mfvan.kernels.flow` beside OpenCV's DIS (medium) and Farneback."""

from __future__ import annotations

import tempfile
import time

import numpy as np

from mfvan.deploy.bench import cpu_name


def synth_flow_pairs(
    n: int = 32, size: int = 128, seed: int = 1, config: str = "standard", codec: str | None = None
) -> list:
    """(onset crop, apex crop, true flow) at the onset and apex of SynthME clips of preset
    `config` (`photo`: photographic identities): grey uint8 face crops (area-resized) and
    the renderer's exact flow, resized and rescaled with them. With `codec` (a key of
    `synth.ENCODINGS`), the clip's frames from onset to apex are encoded as a camera would
    and the pair is taken from the decoded video. Seed 1: the flow's parameters were chosen
    on seed 0."""

    import av
    import cv2

    from mfvan.kernels.faces import to_grey
    from mfvan.kernels.facespot import decoded_grey
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
            grey = [to_grey(r.render(s)) for s in (a, b)]
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = f"{tmp}/clip.{synth.ENCODINGS[codec].ext}"
                frames = (r.render(timeline.state(t)) for t in range(e.onset, e.apex + 1))
                synth.encode_video(path, frames, cfg.fps, codec, cfg.frame_size)
                with av.open(path) as container:
                    decoded = [decoded_grey(f) for f in container.decode(video=0)]
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


def bench_flow_batch(
    streams=(1, 16, 64, 256), size: int = 128, runs: int = 20, cpu_pairs: int = 16
) -> dict:
    """The batched GPU flow (`mfvan.kernels.flow_cuda`, one launch per step for K streams'
    crops) per K: ms per batch and crops per second, host transfers included; side by side
    with the CPU kernel on one core (crops per second over `cpu_pairs` pairs), and the
    largest difference between the two flows on the first pairs."""
    import cv2

    from mfvan.kernels.flow import dense_flow
    from mfvan.kernels.flow_cuda import dense_flow_batch

    rng = np.random.default_rng(0)
    most = max(streams)
    base = np.stack(
        [cv2.GaussianBlur(rng.random((size, size)) * 255, (0, 0), 2) for _ in range(most)]
    ).astype(np.float32)
    shift = np.float32([[1, 0, 0.6], [0, 1, -0.3]])
    moved = np.stack(
        [cv2.warpAffine(b, shift, (size, size), borderMode=cv2.BORDER_REFLECT) for b in base]
    )
    first, second = base.astype(np.uint8), moved.astype(np.uint8)
    cpu = [dense_flow(a, b) for a, b in zip(first[:2], second[:2], strict=True)]  # compiled
    start = time.perf_counter()
    for i in range(cpu_pairs):
        cpu_flow = dense_flow(first[i % most], second[i % most])
    cpu_rate = cpu_pairs / (time.perf_counter() - start)
    del cpu_flow
    rows = []
    for k in streams:
        gpu = dense_flow_batch(first[:k], second[:k])  # compiles at the first launch
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            dense_flow_batch(first[:k], second[:k])
            times.append(time.perf_counter() - start)
        ms = float(np.median(times)) * 1e3
        diff = max(float(np.abs(gpu[i] - cpu[i]).max()) for i in range(min(k, 2)))
        rows.append(
            {"streams": k, "ms_per_batch": ms, "crops_per_s": k / ms * 1e3, "max_diff_px": diff}
        )
    import os

    from numba import cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        device = "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1: a check of the code, no speed)"
    else:
        name = cuda.get_current_device().name
        device = name.decode() if isinstance(name, bytes) else str(name)
    return {
        "size": size,
        "machine": cpu_name(),
        "device": device,
        "cpu_crops_per_s": cpu_rate,
        "rows": rows,
    }


def format_flow_batch_report(r: dict) -> str:
    lines = [
        f"dense flow of K streams' {r['size']} px crops in one batch on {r['device']}, host "
        f"transfers included; the CPU kernel on one core of {r['machine']}: "
        f"{r['cpu_crops_per_s']:.0f} crops/s",
        f"{'K':>5}{'ms/batch':>11}{'crops/s':>11}{'x one CPU core':>16}{'max |GPU-CPU| px':>19}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['streams']:>5}{row['ms_per_batch']:>11.2f}{row['crops_per_s']:>11.0f}"
            f"{row['crops_per_s'] / r['cpu_crops_per_s']:>16.1f}{row['max_diff_px']:>19.2e}"
        )
    return "\n".join(lines)
