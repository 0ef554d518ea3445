"""`mfvan bench model`: MFVAN's parameters, FLOPs and latency, eager PyTorch beside ONNX
Runtime.

It builds MFVAN from a config (random weights: speed does not depend on their values),
counts parameters and FLOPs, and times one forward pass of a batch of its inputs (onset,
apex, and the motion with a motion config) with
eager PyTorch and with ONNX Runtime on the exported graph, in the same process and on the
same inputs, alternating engines so that the machine's noise hits both. It reports p50 and
p99 of the batch latency and the per-pair latency (batch latency / batch size) for batch 1
and 8. Warm-up runs (and ONNX export) are outside the timings.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mfvan.deploy.bench import cpu_name, percentiles


def count_flops(model, batch: int = 1) -> int:
    """Floating-point operations of one forward pass (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mfvan.deploy.export import example_inputs

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*example_inputs(model.cfg, batch))
    return counter.get_total_flops()


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
        feed = {
            name: rng.standard_normal((batch, *cfg.input_shape(name))).astype(np.float32)
            for name in cfg.inputs
        }
        tensors = [torch.from_numpy(x) for x in feed.values()]

        def run_torch(inputs=tensors):
            with torch.inference_mode():
                model(*inputs)

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
            p50, p99 = percentiles(samples)
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
