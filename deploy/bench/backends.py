"""`mfvan bench backends`: every inference backend that runs here, as the recognizer
calls it, at batch 1/8/32: per-pair p50/p99 and pairs/s, against eager torch."""

from __future__ import annotations

import time

import numpy as np
import torch

from mfvan.deploy.bench import cpu_name, percentiles


def variants(device: str = "cpu") -> list[tuple[str, str, object]]:
    """(row name, registry name, options): every backend of the registry
    (`mfvan.deploy.inference.backends.REGISTRY`) at least once, and the torch settings
    worth comparing. On the CPU: eager (the
    reference), `torch.compile`, the AOTInductor package. On CUDA: eager FP32 (the
    reference), FP16 and BF16 autocast, CUDA graphs (FP32, FP16), `torch.compile`
    (max-autotune), the AOTInductor package for CUDA, and the rest as they fall."""
    from mfvan.deploy.inference.backends import REGISTRY, Options

    if device.startswith("cuda"):
        cuda = dict(device=device)
        rows = [
            ("torch eager (cuda fp32)", "torch", Options(**cuda)),
            ("torch cuda fp16", "torch", Options(**cuda, precision="fp16")),
            ("torch cuda bf16", "torch", Options(**cuda, precision="bf16")),
            ("torch cuda fp32 + CUDA graphs", "torch", Options(**cuda, cuda_graphs=True)),
            (
                "torch cuda fp16 + CUDA graphs",
                "torch",
                Options(**cuda, precision="fp16", cuda_graphs=True),
            ),
            (
                "torch.compile max-autotune (cuda)",
                "torch",
                Options(**cuda, compile_mode="max-autotune"),
            ),
            ("aoti (cuda)", "aoti", Options(**cuda)),
        ]
    else:
        rows = [
            ("torch eager (cpu)", "torch", Options()),
            ("torch.compile (cpu)", "torch", Options(compile=True)),
            ("aoti (cpu)", "aoti", Options()),
        ]
    named = {name for _, name, _ in rows}
    rows += [(name, name, Options()) for name in REGISTRY if name not in named]
    return rows


def backend_candidates(model, device: str = "cpu", rows: str | None = None) -> tuple[dict, dict]:
    """(row name -> backend, row name -> why it cannot run here) for every variant (those
    whose name matches the regular expression `rows`, when given); no fallback: a row runs
    what it names or is left out, with its reason."""
    import re

    from mfvan.deploy.inference.backends import REGISTRY, BackendUnavailable

    made, missing = {}, {}
    for row, name, options in variants(device):
        if rows and not re.search(rows, row):
            continue
        try:
            made[row] = REGISTRY[name].make(model, options)
        except (BackendUnavailable, ImportError) as e:
            missing[row] = str(e)
    return made, missing


def bench_backends(
    config_name: str = "demo",
    batches=(1, 8, 32),
    runs: int = 100,
    warmup: int = 10,
    device: str = "cpu",
    rows: str | None = None,
) -> dict:
    """Each backend as the recognizer calls it (uint8 crops and, with the motion input,
    their flow in; probabilities out; the network's preprocessing included), per batch
    size: p50 and p99 per pair, pairs/s.
    Backends alternate run by run, so that the machine's noise hits them alike."""
    from mfvan.model.mfvan import CONFIGS, MFVAN

    torch.manual_seed(0)
    model = MFVAN(CONFIGS[config_name]).eval()
    made, missing = backend_candidates(model, device, rows)
    rng = np.random.default_rng(0)
    table = []
    for batch in batches:
        onset = rng.integers(0, 256, (batch, 128, 128), dtype=np.uint8)
        apex = rng.integers(0, 256, (batch, 128, 128), dtype=np.uint8)
        # the flow the spot stage sends with each pair (float16 on the wire)
        flow = rng.standard_normal((batch, 128, 128, 2)).astype(np.float16)
        flow = flow if model.cfg.motion != "none" else None
        for backend in made.values():
            for _ in range(warmup):
                backend(onset, apex, flow)
        times = {name: [] for name in made}
        for _ in range(runs):
            for name, backend in made.items():
                start = time.perf_counter()
                backend(onset, apex, flow)
                times[name].append(time.perf_counter() - start)
        for name, samples in times.items():
            p50, p99 = percentiles(samples)
            table.append(
                {
                    "backend": name,
                    "batch": batch,
                    "per_pair_p50_ms": p50 / batch,
                    "per_pair_p99_ms": p99 / batch,
                    "pairs_per_s": batch / (p50 / 1e3),
                }
            )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return {
        "config": config_name,
        "device": device,
        "machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads; {gpu}",
        "rows": table,
        "not_run": missing,
    }


def format_backends_report(r: dict) -> str:
    lines = [
        f"MFVAN '{r['config']}' per backend, uint8 crops in (preprocessing included); "
        f"machine: {r['machine']}",
        f"{'backend':<34}{'batch':>6}{'p50 ms/pair':>13}{'p99 ms/pair':>13}{'pairs/s':>10}"
        f"{'x eager':>9}",
    ]
    eager = {
        row["batch"]: row["per_pair_p50_ms"]
        for row in r["rows"]
        if row["backend"].startswith("torch eager")
    }
    for row in r["rows"]:
        ratio = eager.get(row["batch"])
        lines.append(
            f"{row['backend']:<34}{row['batch']:>6}{row['per_pair_p50_ms']:>13.3f}"
            f"{row['per_pair_p99_ms']:>13.3f}{row['pairs_per_s']:>10.0f}"
            + (f"{ratio / row['per_pair_p50_ms']:>9.2f}" if ratio else f"{'-':>9}")
        )
    for name, why in r.get("not_run", {}).items():
        lines.append(f"not run here: {name} ({why})")
    return "\n".join(lines)
