"""MFVAN: the multi-scale fusion visual attention network (Pan, Yang, Xie and Wang, Frontiers
in Neuroscience 17:1216181, 2023), read top to bottom as the paper's Figure 2.

    apex ──► Student CNN ──► predicted onset Ô ──► R = apex - Ô ──► GlobalEncoder ─► g
                 │  └─ feature maps F1 (1/2), F2 (1/4)
    apex, F1, F2 ──► one ViT branch each ──► cls attention ranks patches ──► mask
                 └─► masked pass: kept tokens only ──► token MLP, masked mean ─► z_s
    [g, z_image, z_1, z_2] ──► fusion MLP ──► logits

The paper's equations were lost and it gives no hyperparameters; each choice below is ours,
with its reason.

Identity removal (Section 3.1). The onset frame is the subject's "identity image"; a
teacher autoencoder (encoder of residual blocks, deconvolution decoder) is pre-trained to
reconstruct any frame, then teacher and a shallow student are trained to map apex -> onset
(MSE), the teacher's output a soft target for the student (`losses.identity_removal`).
The identity-removed image is R = apex - Ô, what the apex has that the identity image has
not: the expression. The student's two intermediate feature maps are the multi-scale
features. Only the student runs at inference; the teacher exists for training.
  Choice: `identity_source`. "student" (the paper) uses Ô = student(apex). "onset" uses the
  true onset, R = apex - onset, which the live pipeline always has: on SynthME, where a
  1-2 px expression sits on faces that differ by far more (docs/synthme.md), the true onset
  removes identity exactly while a student must first learn to. The student is trained
  and its feature maps are used either way.

Multi-scale attention (Section 3.2). The apex image and the student's feature maps each go
to their own ViT branch (Dosovitskiy et al. 2021): convolutional patch embedding (kernel =
stride = patch), learned positional embedding, its own class token, L pre-norm blocks of
multi-head self-attention and MLP. Patch sizes are chosen so every scale has the same
token grid (`grid` x `grid`), so scales differ in what a token sees, not in how many there
are.

Masking. Choice: a branch ranks its patches by the class token's attention to them in its
last block, averaged over heads and renormalised over the patches (so the weights sum to
1 and a uniform ranking gives each 1/N). A patch is kept when its weight is at least
`mask_threshold` / N (threshold 1.0 = above-average attention); the best patch is always
kept. The kept tokens are then re-encoded by a second pass through the same blocks in
which masked patches' keys are blocked (an additive -1e4 bias) and their outputs zeroed:
a kept token's feature depends on kept patches only, so perturbing a masked patch leaves
the fused feature unchanged (tested). The mask is a 0/1 multiplication with a
straight-through sigmoid gradient (temperature `mask_temperature`), never indexing, so all
shapes are static for ONNX and TensorRT.

Fusion and heads. The kept tokens of scale s go through a token-wise MLP and are averaged
under the mask: z_s. The global feature g is a small CNN over R. logits = MLP([g, z_s...]).
Each branch's class token also classifies its scale alone (`scale_logits`) and each z_s
alone (`mask_logits`): the paper's per-scale and mask losses (see `losses.py`).

Inputs and preprocessing. `forward(onset, apex)` takes two (B, C, S, S) float32 tensors:
the aligned face crop (eyes level) resized to S x S, grey (C = 1) or RGB (C = 3), scaled to
[0, 1] and normalised (x - 0.5) / 0.5 (`preprocess` does this from uint8 images). Output:
logits (B, num_classes). `forward_features` returns everything (attention maps, masks,
predicted onset) for losses and figures.

Motion (our addition; `motion`, not in the paper). On faces whose micro-expression is a
sub-pixel warp with no change of appearance (SynthME; docs/results.md), the onset-to-apex
optical flow is close to a sufficient statistic, and a network that must find that motion
in intensity differences learns it from a few hundred clips only partly. The live spotter
measures exactly this motion already, so the spot stage sends each pair's flow with it
(`mfvan.kernels.motion.pair_flow`: the spotter's dense flow on the two crops, the head's
rigid motion undone) and it enters MFVAN as one more scale, fused like the others:
`forward(onset, apex, motion)` takes a (B, 3, S, S) input, horizontal and vertical flow and
the optical strain (`preprocess_motion` makes it from the flow; `prepare_inputs` makes
every input from what the spot stage sends). Where it enters is `motion`: "branch", its own
ViT branch (patch embedding over the three channels, class token, blocks, mask, fused z;
its per-scale and mask losses join the others), "global", three more channels of the
global encoder's input beside the identity-removed image, "both", or "none" (the paper's
network; `paper` and `demo` stay so). The `motion` preset (what ships) is `demo` with
motion="both". Why: in the first folds of the LOSO ablation (2026-12-03; the first
held-out subject for every placement, the second for "both", before the run was cut for
time) every placement classified all 17 pairs of the first subject right where the network
without motion got 11, and "both" all 15 of the second: the placements could not be told
apart there, so the one that hands the motion to both readers was kept, the attention
branch choosing where it matters and the global CNN weighing how much moved; the complete
16-fold rows of every placement are `mfvan reproduce`'s (docs/results.md).

Ablations (Table 3): `identity_removal=False` runs the global encoder on the apex itself;
`scales` picks any subset of ("image", "s1", "s2"); an empty subset is the paper's
"Global" / "Global+RI" rows.

Imports nothing of mfvan.stream or mfvan.deploy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCALES = ("image", "s1", "s2")
ARCHITECTURES = ("mfvan", "region-motion", "off-apexnet")
# the baselines the recognizer can serve: they read the spot stage's motion, not pixels
MOTION_ARCHITECTURES = ("region-motion", "off-apexnet")
# Where the onset-to-apex motion enters (see "Motion" in the module's docstring).
MOTIONS = ("none", "branch", "global", "both")
MOTION_CHANNELS = 3  # horizontal and vertical flow, optical strain
MOTION_GAIN = 2.0  # flow in px of a 128 px crop, times this (expressions: 0.2-1 px there)
STRAIN_GAIN = 20.0  # optical strain (unitless, at the network's size), times this


@dataclass(frozen=True)
class MFVANConfig:
    """Every hyperparameter of MFVAN. Named presets are in `CONFIGS`."""

    name: str = "paper"
    # the network this config builds (`build_network`): "mfvan"; "region-motion", the
    # interpretable baseline on per-region motion alone (`baselines.RegionMotion`), which
    # reads only num_classes, image_size, motion (not "none") and dropout; "off-apexnet",
    # the flow CNN baseline on the same motion input (`baselines.OffApexNet`)
    arch: str = "mfvan"
    num_classes: int = 3
    image_size: int = 224
    in_chans: int = 3
    # Teacher autoencoder (training only).
    teacher_width: int = 64
    teacher_blocks: int = 4
    # Student: two stride-2 stages; their outputs are the scales s1 (1/2) and s2 (1/4).
    student_widths: tuple[int, int] = (32, 64)
    # ViT branches.
    grid: int = 14  # tokens per side in every branch
    dim: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    # Global encoder over the identity-removed image.
    global_width: int = 64
    # Masking.
    mask_threshold: float = 1.0  # keep patches with attention >= threshold / N
    mask_temperature: float = 0.1
    # Ablation switches.
    identity_removal: bool = True
    identity_source: str = "student"  # "student" (the paper) or "onset" (the true onset)
    scales: tuple[str, ...] = SCALES
    motion: str = "none"  # one of MOTIONS
    dropout: float = 0.1
    # Loss weights (losses.total_loss).
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"ri": 1.0, "global": 1.0, "scale": 0.5, "mask": 0.5}
    )
    focal_gamma: float = 2.0

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if self.arch in MOTION_ARCHITECTURES and self.motion == "none":
            raise ValueError(f"a {self.arch} config needs the motion input (motion != 'none')")
        bad = [s for s in self.scales if s not in SCALES]
        if bad:
            raise ValueError(f"unknown scale(s) {bad}; choose from {SCALES}")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {self.motion!r}")
        if self.identity_source not in ("student", "onset"):
            raise ValueError(
                f"identity_source must be 'student' or 'onset', got {self.identity_source!r}"
            )
        if self.image_size % (4 * self.grid):
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 4 * grid = {4 * self.grid}"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The network's inputs, in `forward`'s order (and the ONNX graph's names)."""
        return ("onset", "apex", "motion") if self.motion != "none" else ("onset", "apex")

    def input_shape(self, name: str) -> tuple[int, int, int]:
        """(C, S, S) of the input `name` (one of `inputs`), batch left out."""
        channels = MOTION_CHANNELS if name == "motion" else self.in_chans
        return (channels, self.image_size, self.image_size)

    @property
    def motion_branch(self) -> bool:
        return self.motion in ("branch", "both")

    @property
    def motion_global(self) -> bool:
        return self.motion in ("global", "both")

    def patch_size(self, scale: str) -> int:
        """Patch side (in that scale's pixels) giving a grid x grid token layout."""
        stride = {"image": 1, "motion": 1, "s1": 2, "s2": 4}[scale]
        return self.image_size // stride // self.grid

    def scale_channels(self, scale: str) -> int:
        return {
            "image": self.in_chans,
            "motion": MOTION_CHANNELS,
            "s1": self.student_widths[0],
            "s2": self.student_widths[1],
        }[scale]

    def ablation(self, identity_removal: bool, scales: tuple[str, ...]) -> MFVANConfig:
        """This config with one of the paper's ablation rows switched on."""
        return replace(self, identity_removal=identity_removal, scales=tuple(scales))


CONFIGS: dict[str, MFVANConfig] = {
    # Tests: one training step in well under a second on a CPU.
    "tiny": MFVANConfig(
        name="tiny",
        image_size=32,
        in_chans=1,
        teacher_width=8,
        teacher_blocks=1,
        student_widths=(8, 16),
        grid=4,
        dim=32,
        depth=1,
        heads=2,
        mlp_ratio=2.0,
        global_width=8,
        dropout=0.0,
    ),
    # What ships with the live pipeline: sized so one (onset, apex) pair classifies in
    # under 15 ms on a 2-core CPU with ONNX Runtime (docs/benchmarks.md).
    "demo": MFVANConfig(
        name="demo",
        image_size=64,
        in_chans=1,
        teacher_width=16,
        teacher_blocks=2,
        student_widths=(16, 32),
        grid=8,
        dim=64,
        depth=2,
        heads=4,
        mlp_ratio=2.0,
        global_width=16,
        identity_source="onset",
    ),
    # The size one would report: 224 px RGB, ViT-Tiny-like branches.
    "paper": MFVANConfig(),
}
# The shipped default for the live pipeline: `demo` with the onset-to-apex motion entering
# in both places (see "Motion" above for why).
CONFIGS["motion"] = replace(CONFIGS["demo"], name="motion", motion="both")


# ----------------------------------------------------------------------------- building blocks


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip (He et al. 2016), BatchNorm, ReLU."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Teacher(nn.Module):
    """Autoencoder: a stride-4 encoder of residual blocks, a deconvolution decoder."""

    def __init__(self, cfg: MFVANConfig):
        super().__init__()
        w = cfg.teacher_width
        self.encoder = nn.Sequential(
            conv_bn_relu(cfg.in_chans, w, 2),
            conv_bn_relu(w, 2 * w, 2),
            *[ResBlock(2 * w) for _ in range(cfg.teacher_blocks)],
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(w, cfg.in_chans, 4, stride=2, padding=1),
        )

    def forward(self, x):  # (B, C, S, S) -> (B, C, S, S)
        return self.decoder(self.encoder(x))


class Student(nn.Module):
    """A shallow CNN mapping apex -> onset; its two stages are the scales s1 and s2."""

    def __init__(self, cfg: MFVANConfig):
        super().__init__()
        c1, c2 = cfg.student_widths
        self.stage1 = conv_bn_relu(cfg.in_chans, c1, 2)  # (B, c1, S/2, S/2)
        self.stage2 = conv_bn_relu(c1, c2, 2)  # (B, c2, S/4, S/4)
        self.up1 = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(c1, cfg.in_chans, 4, stride=2, padding=1)

    def forward(self, apex):
        f1 = self.stage1(apex)
        f2 = self.stage2(f1)
        onset = self.up2(F.relu(self.up1(f2) + f1))
        return onset, f1, f2


class Attention(nn.Module):
    """Readable multi-head self-attention that returns its weights (the mask needs them).

    `bias` (B, 1, 1, N) is added to the logits: -1e4 on a key removes it.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d/H)
        logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        if bias is not None:
            logits = logits + bias
        attn = logits.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x, bias=None):
        y, attn = self.attn(self.norm1(x), bias)
        x = x + y
        return x + self.mlp(self.norm2(x)), attn


class ScaleBranch(nn.Module):
    """One scale's ViT: patch embedding, positions, class token, L blocks; then the mask and
    the masked second pass that gives this scale's fused feature z."""

    def __init__(self, cfg: MFVANConfig, scale: str):
        super().__init__()
        patch = cfg.patch_size(scale)
        n = cfg.grid * cfg.grid
        self.threshold = cfg.mask_threshold
        self.temperature = cfg.mask_temperature
        self.embed = nn.Conv2d(cfg.scale_channels(scale), cfg.dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.token_mlp = Mlp(cfg.dim, cfg.dim * 2, dropout=cfg.dropout)
        self.scale_head = nn.Linear(cfg.dim, cfg.num_classes)
        self.mask_head = nn.Linear(cfg.dim, cfg.num_classes)

    def encode(self, tokens, bias=None):
        attn = None
        for block in self.blocks:
            tokens, attn = block(tokens, bias)
        return self.norm(tokens), attn

    def forward(self, x):
        patches = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        tokens = torch.cat([self.cls.expand(patches.shape[0], -1, -1), patches], 1) + self.pos
        encoded, attn = self.encode(tokens)  # (B, N+1, D), (B, H, N+1, N+1)
        weights = attn[:, :, 0, 1:].mean(1)  # class token -> patches, (B, N)
        weights = weights / weights.sum(-1, keepdim=True)
        n = weights.shape[-1]
        cut = torch.minimum(
            torch.full_like(weights[:, :1], self.threshold / n), weights.amax(-1, keepdim=True)
        )
        hard = (weights >= cut).to(weights.dtype)
        soft = torch.sigmoid((weights * n - cut * n) / self.temperature)
        mask = hard + (soft - soft.detach())  # exactly 0/1 forward, sigmoid gradient backward
        # Second pass: masked patches' keys blocked, so kept tokens see kept patches only.
        keep = torch.cat([torch.ones_like(hard[:, :1]), hard], 1)  # class token always kept
        bias = ((1.0 - keep) * -1e4)[:, None, None, :]
        kept, _ = self.encode(tokens, bias)
        feats = self.token_mlp(kept[:, 1:]) * mask[..., None]
        z = feats.sum(1) / mask.sum(-1, keepdim=True).clamp_min(1.0)  # (B, D)
        return {
            "cls": encoded[:, 0],
            "z": z,
            "weights": weights,
            "mask": mask,
            "scale_logits": self.scale_head(encoded[:, 0]),
            "mask_logits": self.mask_head(z),
        }


class GlobalEncoder(nn.Module):
    """A small CNN over the identity-removed image, pooled to one vector."""

    def __init__(self, cfg: MFVANConfig):
        super().__init__()
        w = cfg.global_width
        channels = cfg.in_chans + (MOTION_CHANNELS if cfg.motion_global else 0)
        self.net = nn.Sequential(
            conv_bn_relu(channels, w, 2),
            conv_bn_relu(w, 2 * w, 2),
            ResBlock(2 * w),
            conv_bn_relu(2 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = 4 * w

    def forward(self, x):
        return self.net(x)


# ----------------------------------------------------------------------------- the network


class MFVAN(nn.Module):
    def __init__(self, cfg: MFVANConfig):
        super().__init__()
        self.cfg = cfg
        self.inputs = cfg.inputs  # what `forward` takes from a training batch (as baselines)
        self.uses_student = cfg.identity_removal or any(s != "image" for s in cfg.scales)
        self.teacher = Teacher(cfg) if cfg.identity_removal else None
        self.student = Student(cfg) if self.uses_student else None
        self.global_encoder = GlobalEncoder(cfg)
        branches = (*cfg.scales, "motion") if cfg.motion_branch else cfg.scales
        self.branches = nn.ModuleDict({s: ScaleBranch(cfg, s) for s in branches})
        fused = self.global_encoder.out_dim + cfg.dim * len(branches)
        self.head = nn.Sequential(
            nn.LayerNorm(fused),
            Mlp(fused, max(fused // 2, cfg.num_classes * 4), cfg.num_classes, cfg.dropout),
        )

    def forward_features(
        self, onset: torch.Tensor, apex: torch.Tensor, motion: torch.Tensor | None = None
    ) -> dict:
        """Everything the losses and figures need: logits, per-scale outputs, predicted onset."""
        if (motion is None) != (self.cfg.motion == "none"):
            raise ValueError(
                f"config {self.cfg.name!r} takes inputs {self.cfg.inputs}, "
                f"given {'no motion' if motion is None else 'motion'}"
            )
        out: dict = {}
        maps = {"image": apex, "motion": motion}
        if self.student is not None:
            predicted, maps["s1"], maps["s2"] = self.student(apex)
            out["onset_pred"] = predicted
        if self.cfg.identity_removal:
            identity = predicted if self.cfg.identity_source == "student" else onset
            removed = apex - identity  # the expression: what the apex has over the identity
        else:
            removed = apex
        if self.cfg.motion_global:
            removed = torch.cat([removed, motion], 1)
        parts = [self.global_encoder(removed)]
        out["scales"] = {}
        for scale, branch in self.branches.items():
            result = branch(maps[scale])
            out["scales"][scale] = result
            parts.append(result["z"])
        out["logits"] = self.head(torch.cat(parts, -1))
        return out

    def forward(
        self, onset: torch.Tensor, apex: torch.Tensor, motion: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, C, S, S) onset and apex (and, with a motion config, the (B, 3, S, S) motion)
        -> (B, num_classes) logits."""
        return self.forward_features(onset, apex, motion)["logits"]


def build_network(cfg: MFVANConfig) -> nn.Module:
    """The network `cfg.arch` names, built from `cfg` (weights files record it)."""
    if cfg.arch in MOTION_ARCHITECTURES:
        from mfvan.model.baselines import MotionOffApexNet, RegionMotion

        return {"region-motion": RegionMotion, "off-apexnet": MotionOffApexNet}[cfg.arch](cfg)
    return MFVAN(cfg)


def preprocess(images: np.ndarray, cfg: MFVANConfig) -> torch.Tensor:
    """uint8 aligned face crops, (B, H, W) grey or (B, H, W, 3) RGB -> the network's input.

    Resized to image_size (area interpolation), converted to the config's channels,
    scaled to [0, 1] and normalised (x - 0.5) / 0.5.
    """
    import cv2

    from mfvan.kernels.faces import to_grey

    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"preprocess expects uint8 images, got {images.dtype}")
    if images.ndim not in (3, 4):
        raise ValueError(f"preprocess expects (B, H, W) or (B, H, W, 3), got shape {images.shape}")
    out = []
    for img in images:
        img = cv2.resize(img, (cfg.image_size, cfg.image_size), interpolation=cv2.INTER_AREA)
        if cfg.in_chans == 1 and img.ndim == 3:
            img = to_grey(img)
        elif cfg.in_chans == 3 and img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        out.append(img.reshape(cfg.image_size, cfg.image_size, cfg.in_chans))
    batch = np.stack(out).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return torch.from_numpy((batch - 0.5) / 0.5)


def preprocess_motion(flow: np.ndarray, size: int) -> torch.Tensor:
    """The spot stage's onset-to-apex flow, (B, M, M, 2) float (`kernels.motion.pair_flow`
    on M px crops; float16 on the wire), -> the network's motion input (B, 3, S, S):
    u and v resized to image_size (area interpolation) in px of a 128 px crop (the
    spotter's unit, so the input does not depend on the crop size) times MOTION_GAIN, and
    the optical strain of the resized flow times STRAIN_GAIN."""
    import cv2

    from mfvan.kernels.signals import optical_strain

    flow = np.asarray(flow)
    if flow.ndim != 4 or flow.shape[-1] != 2 or flow.shape[1] != flow.shape[2]:
        raise ValueError(f"preprocess_motion expects (B, M, M, 2) flow, got shape {flow.shape}")
    side = flow.shape[1]
    out = np.empty((len(flow), MOTION_CHANNELS, size, size), np.float32)
    for i, f in enumerate(flow):
        f = cv2.resize(f.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        out[i, :2] = f.transpose(2, 0, 1) * (128.0 / side * MOTION_GAIN)
        out[i, 2] = optical_strain(np.ascontiguousarray(f * (size / side))) * STRAIN_GAIN
    return torch.from_numpy(out)


def prepare_inputs(
    cfg: MFVANConfig, onset: np.ndarray, apex: np.ndarray, flow: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """The network's inputs by name (`cfg.inputs`) from uint8 crops as the spotter emits
    them, and for a motion config their flow (`kernels.motion.pair_flow` of each pair, as
    the spot stage sends it); without `flow` a motion config computes it here, with the
    same function, from the crops given (grey; RGB crops are made grey first)."""
    inputs = {"onset": preprocess(onset, cfg), "apex": preprocess(apex, cfg)}
    if cfg.motion != "none":
        if flow is None:
            flow = pair_flows(onset, apex)
        inputs["motion"] = preprocess_motion(flow, cfg.image_size)
    return inputs


def pair_flows(onset: np.ndarray, apex: np.ndarray) -> np.ndarray:
    """`kernels.motion.pair_flow` of each (onset, apex) pair of uint8 crops, (B, S, S, 2)."""
    from mfvan.kernels.faces import to_grey
    from mfvan.kernels.motion import pair_flow

    return np.stack([pair_flow(to_grey(a), to_grey(b)) for a, b in zip(onset, apex, strict=True)])
