"""The mask head: a small U-Net that turns attention maps on the token grid into mask logits.

Input: layers x heads channels on the image-token grid (h, w). Each channel is normalised to sum
to one over the grid, so the head reads where the attention goes, not how much of it the image
gets (`normalise`; off for the text-only control, whose channels are constant over the grid). Two down steps and three up steps with skip connections give logits at 4x the grid
(F-LMM's head is the same shape at a larger width).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from visionloom.grounding.config import HeadConfig


def block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.GELU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.GELU(),
    )


class MaskHead(nn.Module):
    def __init__(self, in_channels: int, config: HeadConfig, normalise: bool = True):
        super().__init__()
        self.normalise = normalise
        width = config.width
        self.stem = block(in_channels, width)
        self.down = block(width, 2 * width)
        self.middle = block(2 * width, 2 * width)
        self.up = block(3 * width, width)
        upsamples = []
        for _ in range(config.upsample.bit_length() - 1):
            upsamples += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                block(width, width),
            ]
        self.refine = nn.Sequential(*upsamples)
        self.out = nn.Conv2d(width, 1, 1)
        self.in_channels = in_channels

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> mask logits [N, h*upsample, w*upsample]."""
        if attention.shape[1] != self.in_channels:
            raise ValueError(
                f"the head was built for {self.in_channels} attention channels (layers x heads) but got "
                f"{attention.shape[1]}: was it trained on another VLM?"
            )
        x = attention  # [N, C, h, w]
        if self.normalise:
            x = attention / attention.sum((-2, -1), keepdim=True).clamp_min(1e-6)
            x = x * attention.shape[-1] * attention.shape[-2]  # mean 1 per channel
        skip = self.stem(x)  # [N, W, h, w]
        low = self.down(F.avg_pool2d(skip, 2, ceil_mode=True))  # [N, 2W, h/2, w/2]
        low = self.middle(low)
        up = F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up(torch.cat([up, skip], dim=1))  # [N, W, h, w]
        return self.out(self.refine(x)).squeeze(1)  # [N, h*u, w*u]
