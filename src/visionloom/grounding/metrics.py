"""Referring segmentation metrics, as the RefCOCO papers report them.

cIoU: total intersection over total union across the split (large objects weigh more).
mIoU: the mean of per-sample IoU. Prec@0.5: the share of samples with IoU above 0.5.
All in percent.
"""

from __future__ import annotations

import torch


class MaskMetrics:
    """Accumulates predictions batch by batch; `result()` gives {"cIoU", "mIoU", "P@0.5"}."""

    def __init__(self):
        self.intersection = 0
        self.union = 0
        self.ious: list[float] = []
        self.intersections: list[int] = []  # per sample, in pixels: what a paired comparison resamples
        self.unions: list[int] = []

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """predicted, target: bool [H, W] of one sample (sizes may differ between samples)."""
        if predicted.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(predicted.shape)} and mask {tuple(target.shape)} differ in size"
            )
        intersection = int((predicted & target).sum())
        union = int((predicted | target).sum())
        self.intersection += intersection
        self.union += union
        self.intersections.append(intersection)
        self.unions.append(union)
        self.ious.append(intersection / union if union else 1.0)

    def result(self) -> dict[str, float]:
        if not self.ious:
            raise ValueError("no samples were scored")
        ious = torch.tensor(self.ious)
        return {
            "cIoU": 100.0 * self.intersection / max(1, self.union),
            "mIoU": 100.0 * float(ious.mean()),
            "P@0.5": 100.0 * float((ious > 0.5).float().mean()),
        }

    def outcomes(self) -> dict[str, list[int]]:
        """Each sample's intersection and union in pixels, in the order scored."""
        return {"intersection": list(self.intersections), "union": list(self.unions)}


def metrics_from_outcomes(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """[..., Q] per-sample pixels -> [..., 3]: cIoU, mIoU, P@0.5 in percent, as `MaskMetrics`."""
    intersection, union = intersection.double(), union.double()
    ious = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    return 100.0 * torch.stack(
        [intersection.sum(-1) / union.sum(-1).clamp(min=1), ious.mean(-1), (ious > 0.5).double().mean(-1)], -1
    )
