"""Baselines that always predict a mask: what a frozen VLM's attention has to beat.

A random-weight control's head learns that an empty mask is the cheapest answer (cIoU 0.0), so a
pretrained VLM beating it says little. These two use no image and no expression at all, only what
the training split says about where objects tend to be:

    prior-box    a box centred in the image with the training objects' mean relative width and
                 height (in fractions of the image side)
    prior-mask   the training masks' mean, on a grid of relative coordinates, thresholded at the
                 level that gives the best cIoU on the training split itself; resized to each image

Both are fitted on the training split only and scored with the same metrics as the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from visionloom.data.errors import DatasetFormatError
from visionloom.data.refcoco import RefSample, evaluation_splits, group_by_split, read_refcoco
from visionloom.grounding.metrics import MaskMetrics

GRID = 64  # the prior mask's side, in relative coordinates
THRESHOLDS = tuple(level / 20 for level in range(1, 20))  # candidate levels for the prior mask: 0.05 .. 0.95


@dataclass
class Priors:
    box_size: tuple[float, float]  # mean (height, width) of the objects' boxes, fractions of the image
    mean_mask: torch.Tensor  # [GRID, GRID] float: how often each relative position is object
    threshold: float  # the level of mean_mask that gave the best training cIoU


def _on_grid(mask: np.ndarray) -> torch.Tensor:
    """bool [H, W] -> float [GRID, GRID] in relative coordinates (the share of object in each cell)."""
    tensor = torch.from_numpy(mask).float()[None, None]  # [1, 1, H, W]
    return F.interpolate(tensor, size=(GRID, GRID), mode="area")[0, 0]


def fit_priors(train: list[RefSample]) -> Priors:
    if not train:
        raise ValueError("the training split has no samples to fit the priors on")
    heights = [sample.box[3] / sample.height for sample in train]
    widths = [sample.box[2] / sample.width for sample in train]
    grids = torch.stack([_on_grid(sample.mask()) for sample in train])  # [N, GRID, GRID]
    mean_mask = grids.mean(0)
    targets = grids > 0.5
    best, best_threshold = -1.0, 0.5
    # nearest 0.5 first: among levels that tie on the grid, the unbiased one is kept
    for threshold in sorted(THRESHOLDS, key=lambda level: abs(level - 0.5)):
        predicted = mean_mask >= threshold  # [GRID, GRID]
        intersection = (targets & predicted).sum()
        union = (targets | predicted).sum()
        score = float(intersection) / max(1, int(union))
        if score > best:
            best, best_threshold = score, threshold
    return Priors((float(np.mean(heights)), float(np.mean(widths))), mean_mask, best_threshold)


def predict_box(priors: Priors, height: int, width: int) -> torch.Tensor:
    """bool [height, width]: the centred box of the mean object size (at least one pixel)."""
    box_height = max(1, round(priors.box_size[0] * height))
    box_width = max(1, round(priors.box_size[1] * width))
    top, left = (height - box_height) // 2, (width - box_width) // 2
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top : top + box_height, left : left + box_width] = True
    return mask


def predict_mask(priors: Priors, height: int, width: int) -> torch.Tensor:
    """bool [height, width]: the thresholded mean mask, resized to the image."""
    resized = F.interpolate(
        priors.mean_mask[None, None], size=(height, width), mode="bilinear", align_corners=False
    )
    return resized[0, 0] >= priors.threshold


BASELINES = {"prior-box": predict_box, "prior-mask": predict_mask}


def evaluate_baselines(priors: Priors, samples: list[RefSample]) -> dict[str, dict[str, float]]:
    """{baseline: {"cIoU", "mIoU", "P@0.5"}} on `samples`, with priors from `fit_priors(train)`."""
    return {name: scored.result() for name, scored in score_baselines(priors, samples).items()}


def score_baselines(priors: Priors, samples: list[RefSample]) -> dict[str, MaskMetrics]:
    """Each baseline's `MaskMetrics` on `samples` (its per-sample outcomes included)."""
    results = {}
    for name, predict in BASELINES.items():
        metrics = MaskMetrics()
        for sample in samples:
            metrics.update(predict(priors, sample.height, sample.width), torch.from_numpy(sample.mask()))
        results[name] = metrics
    return results


def baselines_per_split(data_root: Path, split: str | None = None) -> tuple[int, dict[str, dict]]:
    """(training samples the priors were fitted on, {split: {baseline: metrics}}) for `split`, or
    every evaluation split the data set has; the priors are fitted once, on train."""
    by_split = group_by_split(read_refcoco(data_root))
    if split is not None and split not in by_split:
        raise DatasetFormatError(f"--split {split!r}: {data_root} has {', '.join(sorted(by_split))}")
    train = by_split.get("train", [])
    priors = fit_priors(train)
    scored = [split] if split else evaluation_splits(by_split)
    return len(train), {name: evaluate_baselines(priors, by_split[name]) for name in scored}
