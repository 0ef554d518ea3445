"""Training and leave-one-subject-out evaluation: a plain loop you can read in one screen.

MFVAN trains in the paper's order (Section 3.1): the teacher is pre-trained to reconstruct
frames (self-supervised; "all frames" here are the onset and apex frames of the training
pairs, the frames the cache holds), then teacher and student learn apex -> onset (identity
removal), then the whole network trains with the total loss. Baselines train in one phase.
Each phase has its own AdamW optimiser over the parameters it trains.

LOSO: one fold per subject, trained on all others (never on the held-out subject: the
split is tested), predictions of the held-out subject written to `folds/<subject>.json`.
A finished fold is never run again, and a fold interrupted mid-way resumes from its last
epoch checkpoint (`checkpoints/<subject>.pt`: model, optimiser, epoch, RNG states), so an
interrupted run continues where it stopped and gives the same numbers as an uninterrupted
one. Seeds are fixed per fold.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mfvan.model import losses
from mfvan.model.baselines import ApexCNN, OffApexNet, RegionMotion
from mfvan.model.data.pairs import Pairs, flow_features
from mfvan.model.mfvan import (
    MFVAN,
    MOTION_ARCHITECTURES,
    SCALES,
    MFVANConfig,
    build_network,
    preprocess_motion,
)

MODELS = {
    "mfvan": MFVAN,
    "off-apexnet": OffApexNet,
    "apex-cnn": ApexCNN,
    "region-motion": RegionMotion,
}
# The paper's Table 3 rows: (identity removal, scales).
ABLATIONS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "full": (True, SCALES),
    "global": (False, ()),
    "global+ri": (True, ()),
    "global+ri+image": (True, ("image",)),
    "global+ri+s1": (True, ("s1",)),
    "global+ri+s2": (True, ("s2",)),
}


@dataclass(frozen=True)
class TrainConfig:
    epochs_teacher: int = 4
    epochs_ri: int = 4
    epochs: int = 24
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    device: str = "cpu"
    flip: bool = True  # horizontal flip: faces and our classes are left/right symmetric
    # micro-batches per batch, gradients averaged: what `torchrun --nproc-per-node N` does
    # with N processes (each takes one micro-batch), done in one process
    accumulate: int = 1


TRAIN_PRESETS = {
    "tiny": TrainConfig(epochs_teacher=1, epochs_ri=1, epochs=6, batch_size=16, lr=3e-3),
    "demo": TrainConfig(epochs_teacher=3, epochs_ri=3, epochs=30, batch_size=16),
    "paper": TrainConfig(epochs_teacher=10, epochs_ri=10, epochs=60, batch_size=32, lr=1e-3),
}
TRAIN_PRESETS["motion"] = TRAIN_PRESETS["demo"]  # the demo network with the motion input
# models with a training recipe of their own, whatever the config (a small MLP on
# per-region motion has no teacher phases and wants a larger step)
MODEL_PRESETS = {
    "region-motion": TrainConfig(epochs=60, batch_size=64, lr=3e-3, weight_decay=0.01),
}


def train_preset(kind: str, config: str) -> TrainConfig:
    """The training recipe of model `kind` with network config `config`."""
    return MODEL_PRESETS.get(kind, TRAIN_PRESETS[config])


def served_config(kind: str, cfg: MFVANConfig) -> MFVANConfig | None:
    """The config with which the recognizer serves model `kind` built on `cfg`, or None
    when it does not serve it (a LOSO-only baseline). MFVAN is served as it is; the motion
    baselines (`MOTION_ARCHITECTURES`) read the spot stage's motion, so on a config
    without it they are served with it ("both"). Weights can be saved only where its motion
    is `cfg`'s (the inputs the recognizer sends are those trained on)."""
    if kind == "mfvan":
        return cfg
    if kind in MOTION_ARCHITECTURES:
        return replace(cfg, arch=kind, motion="both" if cfg.motion == "none" else cfg.motion)
    return None


def build_model(kind: str, cfg: MFVANConfig, ablation: str = "full") -> torch.nn.Module:
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")
    if kind == "mfvan":
        return MFVAN(cfg.ablation(*ABLATIONS[ablation]))
    if kind == "off-apexnet" and cfg.motion == "none":
        return OffApexNet(cfg)  # as in LOSO without the motion input: the pairs' own flow
    served = served_config(kind, cfg)
    return MODELS[kind](cfg) if served is None else build_network(served)


def _normalise(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, C) uint8 -> (N, C, S, S) float in [-1, 1], as `mfvan.preprocess` gives."""
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)


def make_batch(pairs: Pairs, index, device: str, flip: np.ndarray | None = None) -> dict:
    onset, apex = pairs.onset[index], pairs.apex[index]
    flow = pairs.flow[index] if pairs.flow is not None else None
    motion = pairs.motion[index] if pairs.motion is not None else None
    if flip is not None and flip.any():
        onset, apex = onset.copy(), apex.copy()
        onset[flip] = onset[flip][:, :, ::-1]
        apex[flip] = apex[flip][:, :, ::-1]
        if motion is not None:  # (N, M, M, 2)
            motion = motion.copy()
            motion[flip] = motion[flip][:, :, ::-1]
            motion[flip, ..., 0] *= -1.0
        if flow is not None:
            flow = flow.copy()
            flow[flip] = flow[flip][..., ::-1]
            flow[flip, 0] *= -1.0  # horizontal motion changes sign in a mirror
    batch = {"onset": _normalise(onset).to(device), "apex": _normalise(apex).to(device)}
    if motion is not None:
        batch["motion"] = preprocess_motion(motion, onset.shape[1]).to(device)
    if flow is not None:
        batch["flow"] = torch.from_numpy(np.ascontiguousarray(flow)).to(device)
    return batch


def _phases(model, tcfg: TrainConfig) -> list[tuple[str, int]]:
    if isinstance(model, MFVAN) and model.cfg.identity_removal:
        return [("teacher", tcfg.epochs_teacher), ("ri", tcfg.epochs_ri), ("full", tcfg.epochs)]
    return [("full", tcfg.epochs)]


def _phase_parameters(model, phase: str):
    if phase == "teacher":
        return list(model.teacher.parameters())
    if phase == "ri":
        return list(model.teacher.parameters()) + list(model.student.parameters())
    return list(model.parameters())


def _loss(model, phase: str, batch: dict, target, class_weights):
    if phase == "teacher":
        frames = torch.cat([batch["onset"], batch["apex"]])
        return losses.reconstruction_loss(model, frames)
    if phase == "ri":
        predicted, _, _ = model.student(batch["apex"])
        return losses.identity_removal_loss(
            model, {"onset_pred": predicted}, batch["onset"], batch["apex"]
        )
    if isinstance(model, MFVAN):
        out = model.forward_features(*(batch[k] for k in model.inputs))
        return losses.total_loss(model, out, batch["onset"], batch["apex"], target, class_weights)[
            0
        ]
    logits = model(*(batch[k] for k in model.inputs))
    return losses.focal_loss(logits, target, model.cfg.focal_gamma, class_weights)


def _groups(pairs: Pairs) -> list[np.ndarray] | None:
    """The rows of each annotated sample when `pairs` has jittered rows, else None."""
    if pairs.jittered is None or not pairs.jittered.any():
        return None
    order = np.argsort(pairs.sample, kind="stable")
    cuts = np.flatnonzero(np.diff(pairs.sample[order])) + 1
    return np.split(order, cuts)


def _epoch_rows(groups: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One row per sample, drawn for this epoch: an epoch sees every sample once, at its
    annotated or at a jittered (onset, apex), and costs what an epoch without jitter does."""
    return np.array([rows[rng.integers(len(rows))] for rows in groups])


def _world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _PhaseLoss(torch.nn.Module):
    """The training loss of one phase as a module's forward, so DistributedDataParallel
    sees the forward it must synchronise (MFVAN's phases call submodules directly)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, phase, batch, target, class_weights):
        return _loss(self.model, phase, batch, target, class_weights)


def _phase_setup(model, phase: str, tcfg: TrainConfig, state: dict | None, world: int):
    """A phase's optimiser (its state restored from a checkpoint of the same phase) and
    loss (under DistributedDataParallel with several processes)."""
    optimiser = torch.optim.AdamW(
        _phase_parameters(model, phase), lr=tcfg.lr, weight_decay=tcfg.weight_decay
    )
    if state is not None and state["phase"] == phase:
        optimiser.load_state_dict(state["optimiser"])
    loss_fn = _PhaseLoss(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # a phase trains part of the model: the rest has no gradient to reduce
        loss_fn = DistributedDataParallel(loss_fn, find_unused_parameters=True)
    return optimiser, loss_fn


def _save_checkpoint(checkpoint: Path, model, optimiser, at: tuple[int, str], rng) -> None:
    """Everything a resumed run needs after epoch `at` = (epoch, phase), written atomically:
    an interrupt never leaves half a checkpoint."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "epoch": at[0],
            "phase": at[1],
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": rng.bit_generator.state,
        },
        tmp,
    )
    tmp.replace(checkpoint)


def train(
    model,
    pairs: Pairs,
    tcfg: TrainConfig,
    checkpoint: Path | None = None,
    on_epoch: Callable[[int, str, float], None] | None = None,
    progress: bool = False,
):
    """Train `model` on all of `pairs`; resumable from `checkpoint`. Returns the model."""
    from tqdm import tqdm

    rank, world = _world()
    # Each batch is cut into `shards` micro-batches: one per process under torchrun, or
    # `accumulate` of them in one process; every micro-batch's loss is a mean over its
    # samples and the gradients are averaged over micro-batches, so N processes and one
    # process accumulating N train the same model (float summation order aside; BatchNorm
    # running statistics are rank 0's). With one shard the loop is unchanged.
    shards = world if world > 1 else tcfg.accumulate
    device = tcfg.device
    model.to(device)
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    counts = np.bincount(pairs.labels, minlength=len(pairs.classes))
    class_weights = losses.class_weights_from_counts(counts).to(device)
    schedule = [(phase, e) for phase, n in _phases(model, tcfg) for e in range(n)]
    groups = _groups(pairs)
    start, state = 0, None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        start = state["epoch"] + 1
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = state["numpy_rng"]
    optimiser, current = None, None
    bar = tqdm(
        total=len(schedule),
        initial=start,
        desc="epochs",
        disable=not progress or rank > 0,
        leave=False,
    )
    for epoch in range(start, len(schedule)):
        phase = schedule[epoch][0]
        if phase != current:
            current = phase
            optimiser, loss_fn = _phase_setup(model, phase, tcfg, state, world)
        model.train()
        order = rng.permutation(_epoch_rows(groups, rng) if groups is not None else len(pairs))
        total = 0.0
        for step, i in enumerate(range(0, len(order), tcfg.batch_size)):
            index = np.sort(order[i : i + tcfg.batch_size])
            parts = np.array_split(np.arange(len(index)), shards)
            if min(len(part) for part in parts) < 2:
                continue  # BatchNorm needs two samples
            flip = rng.random(len(index)) < 0.5 if tcfg.flip else np.zeros(len(index), bool)
            optimiser.zero_grad()
            mine = [parts[rank]] if world > 1 else parts
            for k, part in zip([rank] if world > 1 else range(shards), mine, strict=True):
                if shards > 1:  # dropout draws the same in a process as on rank k
                    torch.manual_seed(hash((tcfg.seed, epoch, step, k)) % 2**31)
                sub = index[part]
                batch = make_batch(pairs, sub, device, flip[part] if tcfg.flip else None)
                target = torch.from_numpy(pairs.labels[sub]).to(device)
                loss = loss_fn(phase, batch, target, class_weights)
                # DDP averages gradients over processes; in one process, scale to average
                (loss / (1 if world > 1 else shards)).backward()
                total += float(loss.detach()) * len(sub)
            optimiser.step()
        if checkpoint is not None and rank == 0:
            _save_checkpoint(checkpoint, model, optimiser, (epoch, phase), rng)
        bar.update(1)
        if on_epoch is not None:
            on_epoch(epoch, phase, total / len(pairs))
    bar.close()
    return model.eval()


@torch.no_grad()
def predict(model, pairs: Pairs, device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """Class probabilities, (N, K)."""
    model.eval().to(device)
    out = []
    for i in range(0, len(pairs), batch_size):
        batch = make_batch(pairs, np.arange(i, min(i + batch_size, len(pairs))), device)
        logits = model(*(batch[k] for k in model.inputs))
        out.append(torch.softmax(logits, -1).cpu().numpy())
    return np.concatenate(out)


def loso_folds(subjects: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(held-out subject, train index, test index) for each subject."""
    return [
        (s, np.flatnonzero(subjects != s), np.flatnonzero(subjects == s))
        for s in sorted(set(subjects.tolist()))
    ]


def _fold_seed(seed: int, subject: str) -> int:
    return seed * 1_000_003 + zlib.crc32(subject.encode())


def run_loso(
    kind: str,
    cfg: MFVANConfig,
    pairs: Pairs,
    tcfg: TrainConfig,
    run_dir: Path,
    ablation: str = "full",
    progress: bool = True,
) -> list[dict]:
    """LOSO over all subjects of `pairs`; resumable; returns the per-fold records."""
    from dataclasses import replace

    from tqdm import tqdm

    run_dir = Path(run_dir)
    (run_dir / "folds").mkdir(parents=True, exist_ok=True)
    if kind == "off-apexnet" and pairs.flow is None:
        pairs.flow = flow_features(pairs.onset, pairs.apex)
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "model": kind,
                "ablation": ablation if kind == "mfvan" else None,
                "config": asdict(cfg),
                "train": asdict(tcfg),
                "classes": list(pairs.classes),
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    records = []
    folds = loso_folds(pairs.subjects)
    for subject, train_idx, test_idx in tqdm(
        folds, desc=f"LOSO {kind} {ablation}", disable=not progress
    ):
        out = run_dir / "folds" / f"{subject.replace('/', '_')}.json"
        if out.exists():
            records.append(json.loads(out.read_text()))
            continue
        fold_cfg = replace(tcfg, seed=_fold_seed(tcfg.seed, subject))
        torch.manual_seed(fold_cfg.seed)
        model = build_model(kind, cfg, ablation)
        checkpoint = run_dir / "checkpoints" / f"{subject.replace('/', '_')}.pt"
        train(model, pairs.subset(train_idx), fold_cfg, checkpoint)
        held_out = pairs.subset(test_idx)
        annotated, spotted = held_out.annotated(), held_out.spotted()
        probs = predict(model, annotated, tcfg.device)
        figure = run_dir / "attention.png"
        if isinstance(model, MFVAN) and model.cfg.scales and not figure.exists():
            from mfvan.model.evaluate import plot_attention

            shown = np.arange(min(3, len(annotated)))
            plot_attention(
                model,
                make_batch(annotated, shown, tcfg.device),
                figure,
                f"held-out {subject}: class-token attention and kept patches",
            )
        record = {
            "subject": subject,
            "names": annotated.names.tolist(),
            "labels": annotated.labels.tolist(),
            "predictions": probs.argmax(-1).tolist(),
            "probabilities": probs.round(5).tolist(),
        }
        if len(spotted):  # the same held-out samples at a spotter's (onset, apex)
            p = predict(model, spotted, tcfg.device)
            record["spotted"] = {
                "labels": spotted.labels.tolist(),
                "predictions": p.argmax(-1).tolist(),
                "probabilities": p.round(5).tolist(),
            }
        out.write_text(json.dumps(record) + "\n")
        checkpoint.unlink(missing_ok=True)
        records.append(record)
    return records
