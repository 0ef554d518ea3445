"""The `mfvan` command: one console script, one subcommand per task.

Each subcommand is a function taking the parsed arguments, registered in `SUBCOMMANDS`
with the function that adds its flags. Heavy imports happen inside the subcommand, so
`mfvan --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Kept here rather than imported, so that `mfvan --help` does not import torch;
# tests/test_packaging.py holds them equal to the registries they name.
DATASETS = ("casme2", "samm", "smic", "composite", "casme3", "synthme")


def _add_synth(p: argparse.ArgumentParser) -> None:
    from mfvan.model.data.synth import CONFIGS, ENCODINGS

    p.add_argument(
        "--config",
        choices=tuple(CONFIGS),
        default="standard",
        help="preset: 'standard' is the benchmark's fixed set, 'tiny' is for tests, "
        "'camera' and 'photo' are realistic mode (skin detail, camera noise, H.264; 'photo': "
        "photographic identities)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--subjects",
        type=int,
        default=None,
        help="number of subjects (default: the preset's, 16 standard / 3 tiny)",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate, 25 or more (default: the preset's, 200)",
    )
    p.add_argument(
        "--codec",
        choices=tuple(ENCODINGS),
        default=None,
        help="long videos: lossless FFV1 in .mkv, or H.264 / H.265 in .mp4 (h264: CRF 12; "
        "h264-crfN, h265-crf23, h264-cbr: as a camera encodes, 1 s GOP, no B-frames) "
        "(default: the preset's)",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also write preview/<emotion>.png: onset, apex, magnified difference",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per core)"
    )


def _run_synth(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mfvan.model.data import synth

    config = synth.CONFIGS[args.config]
    overrides = {
        k: v
        for k, v in (("subjects", args.subjects), ("fps", args.fps), ("codec", args.codec))
        if v is not None
    }
    try:
        config = replace(config, **overrides)
    except ValueError as err:
        print(f"mfvan synth: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    manifest = synth.generate(
        config, args.out, seed=args.seed, preview=args.preview, workers=args.workers
    )
    elapsed = time.perf_counter() - started
    print(f"SynthME '{config.name}' (seed {args.seed}) written to {args.out} in {elapsed:.1f} s")
    print(
        f"  clips:       {manifest['clips']} in {args.out / 'clips'} (CASME II layout), "
        f"{_megabytes(args.out / 'clips')} MB"
    )
    print(
        f"  long videos: {manifest['long_videos']} in {args.out / 'long'} "
        f"({manifest['long_expressions']['micro']} micro, "
        f"{manifest['long_expressions']['macro']} macro), {_megabytes(args.out / 'long')} MB"
    )
    if args.preview:
        print(f"  previews:    {args.out / 'preview'}/<emotion>.png and subjects.png")
    return 0


def _megabytes(folder: Path) -> int:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6)


def _add_bench(p: argparse.ArgumentParser) -> None:
    what = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    model = what.add_parser(
        "model",
        help="MFVAN's parameters, FLOPs and latency: eager torch and ONNX Runtime side by side",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model.add_argument(
        "--config", choices=("tiny", "demo", "paper"), default="demo", help="network config"
    )
    model.add_argument("--runs", type=int, default=200, help="timed runs per engine and batch")
    model.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    flow = what.add_parser(
        "flow",
        help="dense flow: EPE against SynthME's exact flow and time per pair, ours beside "
        "OpenCV's DIS (medium) and Farneback",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    flow.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="crop sizes")
    flow.add_argument("--pairs", type=int, default=32, help="onset/apex pairs per size")
    flow.add_argument(
        "--sets",
        nargs="+",
        default=["SynthME", "photo", "photo H.264 CRF 23"],
        help="SynthME (parametric faces), photo (photographic identities), "
        "'photo H.264 CRF 23' (the same through a camera's codec)",
    )
    spotter = what.add_parser(
        "spotter",
        help="the spotter's frames per second on one core (flow included), with our flow and "
        "with OpenCV's in its place, and the latency from apex to emitted interval",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    spotter.add_argument("--fps", type=float, default=200.0, help="the stream's frame rate")
    spotter.add_argument("--seconds", type=float, default=10.0, help="stream length")
    spotter.add_argument("--size", type=int, default=128, help="crop size")
    backends = what.add_parser(
        "backends",
        help="every backend that runs here, as the recognizer calls it, at batch 1/8/32: "
        "per-pair p50/p99 and pairs/s, against eager torch",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    backends.add_argument(
        "--config", choices=("tiny", "demo", "paper"), default="demo", help="network config"
    )
    backends.add_argument("--runs", type=int, default=100, help="timed runs per backend, batch")
    backends.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    pipeline = what.add_parser(
        "pipeline",
        help="transport (640x480 frames, mfvan's protocol beside bare pyzmq, ipc and tcp) and "
        "end-to-end latency of `mfvan run` at 200 fps, adding streams until one fails",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pipeline.add_argument(
        "--max-streams", type=int, default=4, help="most streams to try (0: transport only)"
    )
    pipeline.add_argument("--fps", type=float, default=200.0, help="each camera's frame rate")
    pipeline.add_argument("--warmup", type=float, default=10.0, help="seconds before timing")
    pipeline.add_argument("--window", type=float, default=30.0, help="seconds measured")
    pipeline.add_argument("--frames", type=int, default=2000, help="transport frames per round")
    pipeline.add_argument("--rounds", type=int, default=15, help="transport rounds per way")
    pipeline.add_argument("--backend", default="onnxruntime", help="the recognizer's backend")
    pipeline.add_argument("--plot", type=Path, help="also write PNG plots into this folder")


def _run_bench(args: argparse.Namespace) -> int:
    from mfvan.deploy import bench

    if args.target == "model":
        report = bench.format_model_report(
            bench.bench_model(args.config, batches=args.batches, runs=args.runs)
        )
    elif args.target == "flow":
        report = bench.format_flow_report(
            bench.bench_flow(tuple(args.sizes), args.pairs, sets=tuple(args.sets))
        )
    elif args.target == "backends":
        report = bench.format_backends_report(
            bench.bench_backends(args.config, tuple(args.batches), args.runs)
        )
    elif args.target == "spotter":
        report = bench.format_spotter_report(bench.bench_spotter(args.fps, args.seconds, args.size))
    else:
        from mfvan.deploy import bench_pipeline as bp

        result = bp.bench_pipeline(
            args.max_streams, args.fps, args.warmup, args.window, args.frames, args.rounds,
            args.backend,
        )  # fmt: skip
        report = bp.format_pipeline_report(result)
        if args.plot:
            plots = bp.plot_pipeline(result, args.plot)
            report += "\nplots: " + ", ".join(str(p) for p in plots)
    print(report)
    return 0


EXPORT_FORMATS = ("onnx", "torchscript", "tensorrt", "triton")


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    p.add_argument(
        "--out", type=Path, required=True,
        help="a file (onnx, torchscript, tensorrt) or a repository folder (triton)",
    )  # fmt: skip
    p.add_argument("--weights", type=Path, help="MFVAN weights (default: the shipped demo ones)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp16", help="tensorrt")
    p.add_argument("--name", default="mfvan", help="triton: the model's name")
    p.add_argument("--max-batch", type=int, default=32, help="triton: the largest batch")
    p.add_argument("--max-queue-delay-us", type=int, default=1000,
                   help="triton: how long the server waits to fill a batch")  # fmt: skip
    p.add_argument("--kind", choices=("KIND_GPU", "KIND_CPU"), default="KIND_GPU",
                   help="triton: where the server runs the model")  # fmt: skip


def _run_export(args: argparse.Namespace) -> int:
    from mfvan.deploy import export
    from mfvan.deploy.backends import BackendUnavailable
    from mfvan.deploy.reproduce import DEMO_WEIGHTS
    from mfvan.model.weights import WeightsError, load_weights

    try:
        model, meta = load_weights(args.weights or DEMO_WEIGHTS)
    except WeightsError as e:
        print(f"mfvan export: {e}", file=sys.stderr)
        return 2
    try:
        if args.format == "onnx":
            out = export.export_onnx(model, args.out)
        elif args.format == "torchscript":
            out = export.export_torchscript(model, args.out)
        elif args.format == "tensorrt":
            out = export.export_tensorrt(model, args.out, args.precision)
        else:
            out = export.export_triton(
                model, args.out, list(meta["classes"]), args.name, args.max_batch,
                delay_us=args.max_queue_delay_us, kind=args.kind,
            )  # fmt: skip
    except BackendUnavailable as e:
        print(f"mfvan export: {e}", file=sys.stderr)
        return 2
    print(f"{args.format}: {out}")
    return 0


def _add_spot_eval(p: argparse.ArgumentParser) -> None:
    from mfvan.model.spotting import LAYOUT

    p.epilog = LAYOUT
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="a folder of long videos with ground_truth.csv (layout below); "
        "required unless --sweep",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/spotting"), help="report folder (traces, JSON)"
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="generate the realistic-mode matrix ({parametric, photo} x {FFV1, H.264 CRF "
        "18/23/28, H.265 CRF 23, camera CBR} x {200, 60, 30 fps}, held-out and tuning "
        "seeds) under OUT/matrix and evaluate every cell (sets and results are kept: "
        "delete OUT/matrix to redo; about an hour on 2 cores)",
    )
    p.add_argument("--quick", action="store_true", help="with --sweep: the headline cells only")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.add_argument("--docs", type=Path, help="with --sweep: write the results as a Markdown page")


def _run_spot_eval(args: argparse.Namespace) -> int:
    from mfvan.model import spotting

    if args.data is None and not args.sweep:
        print("mfvan spot-eval: give --data DIR, or --sweep", file=sys.stderr)
        return 2
    if args.data is not None:
        try:
            result = spotting.evaluate(args.data, args.out, workers=args.workers)
        except spotting.LayoutError as e:
            print(f"mfvan spot-eval: {e}", file=sys.stderr)
            return 2
        print(spotting.format_score(result))
        print(f"traces and intervals: {args.out}")
    if args.sweep:
        from mfvan.model import spotting_matrix as matrix

        root = args.out / "matrix"
        results = matrix.sweep(root, quick=args.quick, workers=args.workers)
        earlier = matrix.legacy(root, workers=args.workers)
        if args.docs:
            from mfvan.deploy.bench import cpu_name

            command = "mfvan spot-eval --sweep" + (" --quick" if args.quick else "")
            command += f" --docs {args.docs}"
            path = matrix.write_docs(results, earlier, args.docs, command, cpu_name())
            print(f"results: {path}")
    return 0


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        choices=DATASETS,
        help="which dataset's layout --data holds",
    )
    p.add_argument("--data", type=Path, required=True, help="the dataset's root folder")
    p.add_argument(
        "--config",
        choices=("tiny", "demo", "paper"),
        default="demo",
        help="network config (and its training preset)",
    )
    p.add_argument(
        "--model",
        choices=("mfvan", "off-apexnet", "apex-cnn"),
        default="mfvan",
        help="MFVAN or a baseline",
    )
    p.add_argument(
        "--ablation",
        default="full",
        choices=("full", "global", "global+ri", "global+ri+image", "global+ri+s1", "global+ri+s2"),
        help="MFVAN's Table 3 row",
    )
    p.add_argument(
        "--labels",
        choices=("native", "3class"),
        default="3class",
        help="the dataset's own classes or negative/positive/surprise (MEGC 2019)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run folder: folds, checkpoints, report (rerun to resume)",
    )
    p.add_argument(
        "--loso",
        action="store_true",
        help="leave-one-subject-out evaluation (else: train on all data, save weights)",
    )
    p.add_argument("--epochs", type=int, default=None, help="main-phase epochs (default: preset)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(".cache/pairs"),
        help="where aligned face crops are cached",
    )
    p.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="micro-batches per batch, gradients averaged (in one process, what torchrun "
        "--nproc-per-node N does with N)",
    )


def _run_train(args: argparse.Namespace) -> int:
    """`mfvan train`, in one process or under `torchrun --nproc-per-node N` (then
    DistributedDataParallel: gloo on CPU, NCCL on CUDA; rank 0 writes the outputs)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _train(args, 0)
    import torch.distributed as dist

    if args.loso:
        print("mfvan train: --loso under torchrun is not supported; run folds as separate "
              "processes (one `mfvan train --loso` per machine)", file=sys.stderr)  # fmt: skip
        return 2
    cuda = args.device.startswith("cuda")
    if cuda:
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        return _train(args, dist.get_rank())
    finally:
        dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int) -> int:
    from dataclasses import replace

    import torch

    from mfvan.model.data.datasets import DatasetError, load_dataset
    from mfvan.model.data.pairs import build_pairs
    from mfvan.model.evaluate import write_report
    from mfvan.model.mfvan import CONFIGS
    from mfvan.model.train import TRAIN_PRESETS, build_model, run_loso, train

    if args.accumulate < 1:
        print("mfvan train: --accumulate must be at least 1", file=sys.stderr)
        return 2
    try:
        data = load_dataset(args.dataset, args.data, args.labels)
    except (DatasetError, FileNotFoundError) as err:
        print(f"mfvan train: {err}", file=sys.stderr)
        return 2
    for note in data.notes:
        print(f"note: {note}")
    print(
        f"{data.name}: {len(data.samples)} samples, {len(data.subjects)} subjects, {data.counts()}"
    )
    cfg = replace(CONFIGS[args.config], num_classes=len(data.classes))
    tcfg = replace(
        TRAIN_PRESETS[args.config], seed=args.seed, device=args.device, accumulate=args.accumulate
    )
    if args.epochs is not None:
        tcfg = replace(tcfg, epochs=args.epochs)
    if rank > 0:
        torch.distributed.barrier()  # rank 0 crops and caches the pairs first
    pairs = build_pairs(data, cfg.image_size, cfg.in_chans, args.cache, progress=rank == 0)
    if rank == 0 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    print(f"faces found on {pairs.found.mean():.1%} of onset frames (others centre-cropped)")
    if args.loso:
        run_loso(args.model, cfg, pairs, tcfg, args.out, args.ablation)
        summary = write_report(args.out)
        p = summary["pooled"]
        print(f"LOSO pooled: accuracy {p['accuracy']:.4f}  UF1 {p['uf1']:.4f}  UAR {p['uar']:.4f}")
        print(f"report: {args.out / 'report.md'}")
        return 0
    if args.model != "mfvan":
        print(
            "mfvan train: only MFVAN weights can be saved; use --loso for baselines",
            file=sys.stderr,
        )
        return 2
    from mfvan.model.weights import save_weights

    torch.manual_seed(args.seed)  # the initial weights, as `mfvan reproduce` draws them
    model = build_model(args.model, cfg, args.ablation)
    train(model, pairs, tcfg, args.out / "checkpoint.pt", progress=True)
    if rank > 0:
        return 0
    weights = args.out / f"mfvan-{args.config}-{args.dataset}.safetensors"
    save_weights(
        model,
        weights,
        list(data.classes),
        training_data=f"{args.dataset} ({args.labels}) at {args.data}, "
        f"{len(data.samples)} samples, seed {args.seed}",
    )
    print(f"weights: {weights} (+ {weights.with_suffix('.json').name})")
    return 0


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run",
        type=Path,
        nargs="?",
        help="a run folder written by `mfvan train --loso`: rebuild its report",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="instead: evaluate these weights (.safetensors + sidecar) on --data",
    )
    p.add_argument(
        "--dataset",
        default="synthme",
        choices=DATASETS,
        help="with --weights: the dataset's layout",
    )
    p.add_argument("--data", type=Path, default=None, help="with --weights: the dataset's root")
    p.add_argument("--cache", type=Path, default=Path(".cache/pairs"), help="face crop cache")


def _run_eval(args: argparse.Namespace) -> int:
    from mfvan.model.evaluate import write_report

    if args.weights is not None:
        return _eval_weights(args)
    if args.run is None or not (args.run / "run.json").exists():
        print(
            f"mfvan eval: {args.run} is not a LOSO run folder (no run.json); "
            "or pass --weights and --data",
            file=sys.stderr,
        )
        return 2
    summary = write_report(args.run)
    p = summary["pooled"]
    print(f"{args.run}: accuracy {p['accuracy']:.4f}  UF1 {p['uf1']:.4f}  UAR {p['uar']:.4f}")
    return 0


def _eval_weights(args: argparse.Namespace) -> int:
    """Trained weights on every sample of a dataset whose classes are the weights' own."""
    from mfvan.model.data.datasets import CLASSES_3, DatasetError, load_dataset
    from mfvan.model.data.pairs import build_pairs
    from mfvan.model.evaluate import scores
    from mfvan.model.train import predict
    from mfvan.model.weights import WeightsError, load_weights

    try:
        model, meta = load_weights(args.weights)
        label_set = "3class" if tuple(meta["classes"]) == CLASSES_3 else "native"
        if args.data is None:
            raise DatasetError("--weights needs --data, the dataset to evaluate on")
        data = load_dataset(args.dataset, args.data, label_set)
    except (WeightsError, DatasetError, FileNotFoundError) as err:
        print(f"mfvan eval: {err}", file=sys.stderr)
        return 2
    if list(data.classes) != list(meta["classes"]):
        print(
            f"mfvan eval: the weights classify {meta['classes']}, {args.dataset} is labelled "
            f"{list(data.classes)}",
            file=sys.stderr,
        )
        return 2
    print(f"weights: {args.weights} (trained on: {meta['training_data']})")
    pairs = build_pairs(data, model.cfg.image_size, model.cfg.in_chans, args.cache)
    predicted = predict(model, pairs).argmax(-1)
    s = scores(pairs.labels, predicted, len(data.classes))
    print(
        f"{data.name}: {s['n']} samples, accuracy {s['accuracy']:.4f}  UF1 {s['uf1']:.4f}  "
        f"UAR {s['uar']:.4f}"
    )
    shown = zip(pairs.subjects, pairs.names, pairs.labels, predicted, strict=True)
    for subject, name, label, guess in list(shown)[:10]:
        print(
            f"  {subject}/{name:<12} true {data.classes[label]:<9} predicted {data.classes[guess]}"
        )
    return 0


def _add_reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        default=Path("data/synthme-standard"),
        help="SynthME standard (generated there when missing)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="run folders")
    p.add_argument("--docs", type=Path, default=Path("docs/results.md"), help="results page")
    p.add_argument("--workers", type=int, default=2, help="variants trained in parallel")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="main-phase epochs (default: the demo preset's); for smoke runs",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="where to write the demo weights (default: the package's)",
    )


def _run_reproduce(args: argparse.Namespace) -> int:
    from mfvan.deploy.reproduce import DEMO_WEIGHTS, reproduce

    reproduce(
        args.data, args.out, args.docs, args.workers, args.epochs, args.weights or DEMO_WEIGHTS
    )
    return 0


def _lazy(module: str, add_name: str, run_name: str):
    """Entry points imported on use: the live pipeline and the demo pull in the stream
    stack, which `mfvan synth` or `mfvan train` need not load."""
    import importlib

    def add(p):
        getattr(importlib.import_module(f"mfvan.deploy.{module}"), add_name)(p)

    def run(args):
        return getattr(importlib.import_module(f"mfvan.deploy.{module}"), run_name)(args)

    return add, run


def _live(name):
    return _lazy("live", f"add_{name}", "run_pipeline" if name == "run" else f"run_{name}")


SUBCOMMANDS = {
    "run": ("the live pipeline: ingest, spot and recognize, supervised", *_live("run")),
    "ingest": ("stage: decode a source, publish frames", *_live("ingest")),
    "spot": ("stage: track faces, spot micro-expressions, publish pairs", *_live("spot")),
    "recognize": ("stage: classify pairs in batches, publish events", *_live("recognize")),
    "subscribe": ("print recognition events as they arrive", *_live("subscribe")),
    "keys": ("make CURVE key pairs for endpoints off this machine", *_live("keys")),
    "demo": (
        "the live pipeline on SynthME's camera for a minute, scored",
        *_lazy("demo", "add_demo", "run_demo"),
    ),
    "reproduce": (
        "LOSO of MFVAN, its ablations and baselines on SynthME; docs/results.md",
        _add_reproduce,
        _run_reproduce,
    ),
    "train": (
        "train MFVAN or a baseline; --loso evaluates leave-one-subject-out",
        _add_train,
        _run_train,
    ),
    "eval": ("rebuild a LOSO run's report, or evaluate weights on a dataset", _add_eval, _run_eval),
    "synth": ("generate SynthME, the synthetic micro-expression set", _add_synth, _run_synth),
    "spot-eval": (
        "spot micro-expressions in long videos and score them (MEGC protocol)",
        _add_spot_eval,
        _run_spot_eval,
    ),
    "bench": ("measure speed, side by side with a reference", _add_bench, _run_bench),
    "export": (
        "export MFVAN: ONNX, TorchScript, TensorRT, a Triton repository",
        _add_export,
        _run_export,
    ),  # fmt: skip
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; descriptions and epilogs (folder layouts) printed as written."""


def build_parser() -> argparse.ArgumentParser:
    from mfvan.deploy.config import COMMANDS

    parser = argparse.ArgumentParser(
        prog="mfvan",
        description="Real-time micro-expression recognition: spot, classify, publish.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_flags, _) in SUBCOMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=_HelpFormatter,
        )
        add_flags(p)
        if name in COMMANDS:
            p.add_argument(
                "--config",
                type=Path,
                help="a TOML file of flags (keys: the flags without dashes); the environment "
                "(MFVAN_<FLAG>) and the command line override it",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    from mfvan.deploy import config

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    lists = {}
    if command in config.COMMANDS:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", type=Path)
        known, _ = pre.parse_known_args(argv)
        try:
            lists = config.apply(config.subparser(parser, command), known.config)
        except config.ConfigError as e:
            print(f"mfvan {command}: {e}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    config.fill(args, lists)
    return SUBCOMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
