"""Retrieval and generation losses, each a plain function that stands alone.

SDM, ITC and ID follow IRRA's definitions (Jiang & Ye, CVPR 2023) term for term; the generation
loss is the cross-entropy of the auxiliary decoder over VQ code ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdm_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    pids: torch.Tensor,
    logit_scale: float | torch.Tensor,
    image_ids: torch.Tensor | None = None,
    factor: float = 0.3,
    epsilon: float = 1e-8,
) -> torch.Tensor:
    """Similarity distribution matching: KL from the predicted to the true matching distribution.

    image_features, text_features: [B, D] (normalised here); pids, image_ids: [B].
    Pairs of the same identity are matches; with `image_ids`, pairs of the same identity but another
    image count `factor` (IRRA's label smoothing). IRRA divides the label matrix by its row sums
    broadcast over columns; that is kept, and equals row normalisation when every identity appears
    equally often in the batch, as the identity-balanced sampler ensures.
    """
    pids = pids.reshape(-1, 1)
    labels = (pids == pids.t()).float()  # [B, B]
    if image_ids is not None:
        image_ids = image_ids.reshape(-1, 1)
        same_image = (image_ids == image_ids.t()).float()
        labels = (labels - same_image) * factor + same_image
    image_norm = F.normalize(image_features, dim=1)
    text_norm = F.normalize(text_features, dim=1)
    text_to_image = logit_scale * text_norm @ image_norm.t()  # [B_text, B_image]
    image_to_text = text_to_image.t()
    target = labels / labels.sum(dim=1)
    log_target = torch.log(target + epsilon)
    i2t = F.softmax(image_to_text, dim=1) * (F.log_softmax(image_to_text, dim=1) - log_target)
    t2i = F.softmax(text_to_image, dim=1) * (F.log_softmax(text_to_image, dim=1) - log_target)
    return i2t.sum(1).mean() + t2i.sum(1).mean()


def itc_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float | torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over the batch: the i-th image matches the i-th text only."""
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    logits = logit_scale * F.normalize(image_features, dim=1) @ F.normalize(text_features, dim=1).t()
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def id_loss(image_logits: torch.Tensor, text_logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Identity classification on both modalities: [B, num_train_ids] logits, [B] training ids."""
    return (F.cross_entropy(image_logits, pids) + F.cross_entropy(text_logits, pids)) / 2


def generation_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy of predicted VQ code ids: logits [B, L, V], targets [B, L] with ignore_index."""
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
