"""Reference models trained and evaluated by the same code as MFVAN, so every MFVAN number
stands beside one.

- `OffApexNet` after Gan et al. (2019), OFF-ApexNet: the onset-to-apex optical flow
  (horizontal, vertical) and optical strain as a 3-channel image, two convolution +
  max-pool stages, two fully connected layers. Their input was 28 x 28; ours is the
  config's image size, pooled to 7 x 7 before the fully connected layers. In LOSO it reads
  the pairs' own flow (`flow`); with config arch "off-apexnet" it reads instead the spot
  stage's onset-to-apex flow and strain (`motion`, the same three channels, as the live
  recognizer receives them) and takes MFVAN's inputs, so the recognizer serves it.
- `ApexCNN`: the apex frame alone through a small residual CNN: what a network sees
  without the onset and without identity removal.
- `RegionMotion`: the interpretable baseline, a small classifier on per-region motion
  alone: for each facial region of the spotter (`kernels.signals.ROIS`: brows, eyes,
  nose, mouth corners, chin) the mean horizontal and vertical flow, flow magnitude and
  optical strain of the onset-to-apex motion (the spot stage's, head motion undone);
  divided by the strongest region's magnitude, so the pattern (where, which way) is the
  evidence and its size a separate input (its log). Appearance never enters: a codec that
  wipes texture leaves it what defines an action unit.

Both take the same batch dictionary as MFVAN (`onset`, `apex`, `flow`) and return logits.
"""

from __future__ import annotations

import torch
from torch import nn

from mfvan.model.mfvan import MFVANConfig, ResBlock, conv_bn_relu

# the spotter's regions that expressions move (the rigid ones measure the head, not faces)
REGIONS = (
    "brow_left",
    "brow_right",
    "eye_left",
    "eye_right",
    "nose",
    "mouth_left",
    "mouth_right",
    "chin",
)
REGION_FEATURES = ("u", "v", "magnitude", "strain")


class OffApexNet(nn.Module):
    inputs = ("flow",)

    def __init__(self, cfg: MFVANConfig):
        super().__init__()
        self.cfg = cfg
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 49, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(1024, cfg.num_classes),
        )

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(flow))


class MotionOffApexNet(OffApexNet):
    """OFF-ApexNet as the recognizer serves it (config arch "off-apexnet"): MFVAN's inputs,
    of which it reads only `motion`, the spot stage's flow u, v and strain."""

    def __init__(self, cfg: MFVANConfig):
        super().__init__(cfg)
        self.inputs = cfg.inputs

    def forward(self, onset: torch.Tensor, apex: torch.Tensor, motion: torch.Tensor):
        del onset, apex
        return super().forward(motion)


class ApexCNN(nn.Module):
    inputs = ("apex",)

    def __init__(self, cfg: MFVANConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.global_width
        self.net = nn.Sequential(
            conv_bn_relu(cfg.in_chans, w, 2),
            conv_bn_relu(w, 2 * w, 2),
            ResBlock(2 * w),
            conv_bn_relu(2 * w, 4 * w, 2),
            ResBlock(4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(4 * w, cfg.num_classes),
        )

    def forward(self, apex: torch.Tensor) -> torch.Tensor:
        return self.net(apex)


class RegionMotion(nn.Module):
    """Per-region motion -> class. Takes the same inputs as MFVAN with the motion input
    (so every backend and exporter serves it unchanged) and reads only `motion`, the
    (B, 3, S, S) flow u, v and strain of `mfvan.preprocess_motion`."""

    def __init__(self, cfg: MFVANConfig):
        super().__init__()
        from mfvan.kernels.signals import ROIS

        self.cfg = cfg
        self.inputs = cfg.inputs
        size = cfg.image_size
        masks = torch.zeros(len(REGIONS), size, size)
        for i, name in enumerate(REGIONS):
            x0, y0, x1, y1 = (round(v * size) for v in ROIS[name])
            masks[i, y0:y1, x0:x1] = 1.0 / ((y1 - y0) * (x1 - x0))
        self.register_buffer("masks", masks, persistent=False)
        n = len(REGIONS) * len(REGION_FEATURES) + 1
        self.head = nn.Sequential(
            nn.Linear(n, 64),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(64, cfg.num_classes),
        )

    def features(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) motion -> (B, R * 4 + 1): each region's mean u, v, magnitude and
        strain over the strongest region's magnitude, then the log of that magnitude."""
        u, v, strain = motion[:, 0], motion[:, 1], motion[:, 2]
        magnitude = torch.sqrt(u * u + v * v + 1e-6)
        channels = torch.stack([u, v, magnitude, strain], 1)  # (B, 4, S, S)
        per_region = torch.einsum("bchw,rhw->brc", channels, self.masks)  # (B, R, 4)
        scale = per_region[..., 2].amax(1, keepdim=True) + 0.05  # (B, 1)
        normed = per_region / scale[..., None]
        return torch.cat([normed.flatten(1), torch.log(scale)], 1)

    def forward(self, onset: torch.Tensor, apex: torch.Tensor, motion: torch.Tensor):
        del onset, apex  # motion is the evidence; the pixels carry identity
        return self.head(self.features(motion))
