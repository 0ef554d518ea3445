"""Reference models trained and evaluated by the same code as MFVAN, so every MFVAN number
stands beside one.

- `OffApexNet` after Gan et al. (2019), OFF-ApexNet: the onset-to-apex optical flow
  (horizontal, vertical) and optical strain as a 3-channel image, two convolution +
  max-pool stages, two fully connected layers. Their input was 28 x 28; ours is the
  config's image size, pooled to 7 x 7 before the fully connected layers.
- `ApexCNN`: the apex frame alone through a small residual CNN: what a network sees
  without the onset and without identity removal.

Both take the same batch dictionary as MFVAN (`onset`, `apex`, `flow`) and return logits.
"""

from __future__ import annotations

import torch
from torch import nn

from mfvan.model.mfvan import MFVANConfig, ResBlock, conv_bn_relu


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
