"""`mfvan bench model`: the recognizer's networks' parameters, FLOPs and latency, eager
PyTorch beside ONNX Runtime, and each network's cost beside the first's.

It builds MFVAN (and, with `--models`, the baselines the recognizer serves) from a config
(random weights: speed does not depend on their values), counts parameters and FLOPs, and
times one forward pass of a batch of its inputs (onset, apex, and the motion with a motion
config) with eager PyTorch and with ONNX Runtime on the exported graph, in the same process
and on the same inputs, alternating networks and engines so that the machine's noise hits
all. It reports p50 and p99 of the batch latency and the per-pair latency (batch latency /
batch size) for batch 1 and 8. Warm-up runs (and ONNX export) are outside the timings.
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

    from mfvan.deploy.inference.export import example_inputs

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*example_inputs(model.cfg, batch))
    return counter.get_total_flops()


def bench_model(
    config_name: str,
    batches=(1, 8),
    runs: int = 200,
    warmup: int = 20,
    models: tuple[str, ...] = ("mfvan",),
) -> dict:
    """Latency of eager torch and ONNX Runtime for each of `models` (`train.MODELS` the
    recognizer serves: mfvan, region-motion, off-apexnet) built on one config, timed in
    the same loop (every network and engine in turn, so the machine's noise hits all);
    a dict of results."""
    from mfvan.deploy.inference.export import export_onnx, onnx_session
    from mfvan.model.mfvan import CONFIGS
    from mfvan.model.train import build_model, served_config

    cfg = CONFIGS[config_name]
    results = {
        "config": config_name,
        "machine": f"{platform.machine()} {cpu_name()}, {torch.get_num_threads()} torch threads",
        "models": {},
        "rows": [],
    }
    built = {}
    for kind in models:
        torch.manual_seed(0)
        # the baselines as the recognizer serves them: on the spot stage's motion
        model = build_model(kind, served_config(kind, cfg)).eval()
        params = sum(p.numel() for p in model.parameters())
        teacher = getattr(model, "teacher", None)
        with tempfile.TemporaryDirectory() as tmp:
            session = onnx_session(export_onnx(model, Path(tmp) / "model.onnx"))
        built[kind] = (model, session)
        results["models"][kind] = {
            "params": params,
            "inference_params": params - sum(p.numel() for p in teacher.parameters())
            if teacher is not None
            else params,
            "flops_per_pair": count_flops(model, 1),
        }
    rng = np.random.default_rng(0)
    for batch in batches:
        engines = {}
        for kind, (model, session) in built.items():
            feed = {
                name: rng.standard_normal((batch, *model.cfg.input_shape(name))).astype(np.float32)
                for name in model.cfg.inputs
            }
            tensors = [torch.from_numpy(x) for x in feed.values()]

            def run_torch(m=model, inputs=tensors):
                with torch.inference_mode():
                    m(*inputs)

            def run_onnx(s=session, f=feed):
                s.run(None, f)

            engines[(kind, "torch eager")] = run_torch
            engines[(kind, "onnxruntime")] = run_onnx
        for fn in engines.values():
            for _ in range(warmup):
                fn()
        times = {key: [] for key in engines}
        for _ in range(runs):
            for key, fn in engines.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        for (kind, engine), samples in times.items():
            p50, p99 = percentiles(samples)
            results["rows"].append(
                {
                    "model": kind,
                    "engine": engine,
                    "batch": batch,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "per_pair_p50_ms": p50 / batch,
                }
            )
    return results


def format_model_report(r: dict) -> str:
    lines = []
    for kind, m in r["models"].items():
        lines.append(
            f"{kind} '{r['config']}': {m['params'] / 1e6:.3f} M parameters "
            f"({m['inference_params'] / 1e6:.3f} M at inference, without the teacher), "
            f"{m['flops_per_pair'] / 1e6:.1f} MFLOPs per (onset, apex) pair"
        )
    lines += [
        f"machine: {r['machine']}",
        f"{'model':<15}{'engine':<14}{'batch':>6}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'per pair p50 ms':>18}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['model']:<15}{row['engine']:<14}{row['batch']:>6}{row['p50_ms']:>10.2f}"
            f"{row['p99_ms']:>10.2f}{row['per_pair_p50_ms']:>18.2f}"
        )
    by = {(row["model"], row["engine"], row["batch"]): row["p50_ms"] for row in r["rows"]}
    kinds = list(r["models"])
    for batch in sorted({row["batch"] for row in r["rows"]}):
        for kind in kinds:
            ratio = by[(kind, "torch eager", batch)] / by[(kind, "onnxruntime", batch)]
            lines.append(
                f"{kind}, batch {batch}: onnxruntime is {ratio:.2f}x the speed of torch eager (p50)"
            )
        for kind in kinds[1:]:
            for engine in ("onnxruntime", "torch eager"):
                cost = by[(kind, engine, batch)] / by[(kinds[0], engine, batch)]
                lines.append(
                    f"{engine}, batch {batch}: {kind} costs {cost:.2f}x {kinds[0]} a pair (p50)"
                )
    return "\n".join(lines)
