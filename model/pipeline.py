"""One training pipeline: load a dataset -> crop its (onset, apex) pairs -> train -> save.

`mfvan train` (one process, or one per rank under `torchrun`) and `mfvan reproduce` (the
shipped weights) both run it, so the weights a user trains and the ones we ship are made
the same way.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from mfvan.model.data.datasets import Dataset, load_dataset
from mfvan.model.data.pairs import Jitter, Pairs, build_pairs
from mfvan.model.mfvan import CONFIGS, MFVANConfig


@dataclass(frozen=True)
class Prepared:
    """A dataset, the network config sized to its classes, and its cropped pairs."""

    dataset: Dataset
    cfg: MFVANConfig
    pairs: Pairs


def load(dataset: str, root: Path, labels: str, config: str) -> tuple[Dataset, MFVANConfig]:
    """Dataset `dataset` in its layout under `root` (`labels`: "native" or "3class"), and
    the network config `config` sized to its classes."""
    refuse_held_out(root, "training")
    data = load_dataset(dataset, root, labels)
    return data, replace(CONFIGS[config], num_classes=len(data.classes))


def refuse_held_out(root: Path, what: str) -> None:
    """ValueError if the data under `root` has identities made from held-out portraits
    (SynthME's `identities.csv`): those faces are for evaluation only, never for `what`."""
    from mfvan.model.data.portraits import check_training_sources
    from mfvan.model.data.synth import read_identity_sources

    check_training_sources(read_identity_sources(Path(root)), f"{what} on {root}")


def crop(
    data: Dataset,
    cfg: MFVANConfig,
    cache: Path,
    progress: bool = False,
    jitter: Jitter | None = None,
) -> Pairs:
    """The dataset's (onset, apex) pairs cropped at the config's size, cached in `cache`,
    with `jitter`'s rows (a spotter's onset and apex errors) when given. Under
    torch.distributed, rank 0 crops first and the others read its cache."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank > 0:
        dist.barrier()  # rank 0 crops and caches the pairs first
    pairs = build_pairs(
        data, cfg.image_size, cfg.in_chans, cache, progress=progress and rank == 0, jitter=jitter
    )
    if rank == 0 and dist.is_initialized():
        dist.barrier()
    return pairs


def prepare(
    dataset: str, root: Path, labels: str, config: str, cache: Path, jitter: Jitter | None = None
) -> Prepared:
    """`load`, then `crop`."""
    data, cfg = load(dataset, root, labels, config)
    return Prepared(data, cfg, crop(data, cfg, cache, jitter=jitter))


@dataclass(frozen=True)
class WeightsRun:
    """What `train_weights` trains and where it writes: the network (`model_kind`,
    `ablation`, `seed` drawing its initial weights), the weights' path `out` and what the
    sidecar says of them (`training_data`, `calibration`: a temperature fitted on held-out
    folds), a `checkpoint` to resume from, and whether to show `progress`."""

    out: Path
    training_data: str
    seed: int = 0
    model_kind: str = "mfvan"
    ablation: str = "full"
    checkpoint: Path | None = None
    progress: bool = False
    calibration: dict | None = None


def train_weights(prepared: Prepared, tcfg, run: WeightsRun) -> Path | None:
    """Train on every pair and save the weights (+ sidecar) at `run.out`; None on ranks
    other than 0 (they train; rank 0 writes)."""
    import torch
    import torch.distributed as dist

    from mfvan.model.train import build_model, train
    from mfvan.model.weights import save_weights

    torch.manual_seed(run.seed)
    model = build_model(run.model_kind, prepared.cfg, run.ablation)
    train(model, prepared.pairs, tcfg, run.checkpoint, progress=run.progress)
    if dist.is_initialized() and dist.get_rank() > 0:
        return None
    save_weights(
        model,
        run.out,
        list(prepared.dataset.classes),
        training_data=run.training_data,
        calibration=run.calibration,
    )
    return run.out


@contextlib.contextmanager
def distributed(device: str):
    """Under `torchrun` (WORLD_SIZE > 1): a process group (NCCL on CUDA, this rank's GPU;
    gloo on CPU) for the block, and the device this rank trains on; else just `device`."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield device
        return
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()
