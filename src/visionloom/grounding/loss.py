"""Mask losses, each usable alone: dice and binary cross-entropy on logits (F-LMM's pair)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over masks of 1 - 2|P∩T| / (|P| + |T|), with soft P = sigmoid(logits); [N, H, W] each."""
    probability = logits.sigmoid().flatten(1)
    target = target.float().flatten(1)
    overlap = (probability * target).sum(1)
    return (1 - (2 * overlap + eps) / (probability.sum(1) + target.sum(1) + eps)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target.float())


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return dice_loss(logits, target) + bce_loss(logits, target)
