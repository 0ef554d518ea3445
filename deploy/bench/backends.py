"""`mfvan bench backends`: every inference backend that runs here, as the recognizer
calls it, at batch 1/8/32: per-pair p50/p99 and pairs/s, against eager torch."""

from __future__ import annotations

import time

import numpy as np
import torch

from mfvan.deploy.bench import cpu_name, percentiles


def variants() -> list[tuple[str, str, object]]:
    """(row name, registry name, options): every backend of `mfvan.deploy.backends.REGISTRY`
    at least once, and the torch settings worth comparing (compile; on CUDA: FP16 and CUDA
    graphs)."""
    from mfvan.deploy.backends import REGISTRY, Options

    rows = [
        ("torch eager (cpu)", "torch", Options()),
        ("torch.compile (cpu)", "torch", Options(compile=True)),
    ]
    if torch.cuda.is_available():
        rows += [
            ("torch cuda fp32", "torch", Options(device="cuda")),
            ("torch cuda fp16", "torch", Options(device="cuda", precision="fp16")),
            (
                "torch cuda fp16 + CUDA graphs",
                "torch",
                Options(device="cuda", precision="fp16", cuda_graphs=True),
            ),
        ]
    named = {name for _, name, _ in rows}
    rows += [(name, name, Options()) for name in REGISTRY if name not in named]
    return rows


def backend_candidates(model) -> tuple[dict, dict]:
    """(row name -> backend, row name -> why it cannot run here) for every variant; no
    fallback: a row runs what it names or is left out, with its reason."""
    from mfvan.deploy.backends import REGISTRY, BackendUnavailable

    made, missing = {}, {}
    for row, name, options in variants():
        try:
            made[row] = REGISTRY[name].make(model, options)
        except (BackendUnavailable, ImportError) as e:
            missing[row] = str(e)
    return made, missing


def bench_backends(
    config_name: str = "demo", batches=(1, 8, 32), runs: int = 100, warmup: int = 10
) -> dict:
    """Each backend as the recognizer calls it (uint8 crops and, with the motion input,
    their flow in; probabilities out; the network's preprocessing included), per batch
    size: p50 and p99 per pair, pairs/s.
    Backends alternate run by run, so that the machine's noise hits them alike."""
    from mfvan.model.mfvan import CONFIGS, MFVAN

    torch.manual_seed(0)
    model = MFVAN(CONFIGS[config_name]).eval()
    made, missing = backend_candidates(model)
    rng = np.random.default_rng(0)
    rows = []
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
        "not_run": missing,
    }


def format_backends_report(r: dict) -> str:
    lines = [
        f"MFVAN '{r['config']}' per backend, uint8 crops in (preprocessing included); "
        f"machine: {r['machine']}",
        f"{'backend':<32}{'batch':>6}{'p50 ms/pair':>13}{'p99 ms/pair':>13}{'pairs/s':>10}"
        f"{'x eager':>9}",
    ]
    eager = {
        row["batch"]: row["per_pair_p50_ms"]
        for row in r["rows"]
        if row["backend"].startswith("torch eager")
    }
    for row in r["rows"]:
        lines.append(
            f"{row['backend']:<32}{row['batch']:>6}{row['per_pair_p50_ms']:>13.2f}"
            f"{row['per_pair_p99_ms']:>13.2f}{row['pairs_per_s']:>10.0f}"
            f"{eager[row['batch']] / row['per_pair_p50_ms']:>9.2f}"
        )
    for name, why in r.get("not_run", {}).items():
        lines.append(f"not run here: {name} ({why})")
    return "\n".join(lines)
