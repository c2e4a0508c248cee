"""Text-to-image evaluation: encode a split's gallery images and its queries (every caption), then metrics.

Features are L2-normalised here (as IRRA's evaluator does), and the similarity is formed chunk by
chunk inside `retrieval_metrics_from_features`, so memory stays bounded however large the gallery.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from visionloom.data.pedes import PedesSplit
from visionloom.retrieval.datasets import GalleryImages
from visionloom.retrieval.metrics import QueryOutcomes, retrieval_metrics_from_features


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_gallery(model, split: PedesSplit, batch_size: int = 64, num_workers: int = 0) -> torch.Tensor:
    """[G, E] normalised image features, in split order."""
    loader = DataLoader(
        GalleryImages(split, model.input_spec.image_size), batch_size=batch_size, num_workers=num_workers
    )
    device = _device(model)
    features = [model.encode_image(images.to(device)).float() for images in loader]
    return F.normalize(torch.cat(features), dim=-1)


@torch.no_grad()
def encode_queries(model, captions: list[str], batch_size: int = 128) -> torch.Tensor:
    """[Q, E] normalised text features."""
    device = _device(model)
    features = []
    for start in range(0, len(captions), batch_size):
        tokens = model.tokenize(captions[start : start + batch_size])
        features.append(
            model.encode_text(tokens["caption_ids"].to(device), tokens["caption_mask"].to(device)).float()
        )
    return F.normalize(torch.cat(features), dim=-1)


@torch.no_grad()
def evaluate_split_outcomes(
    model, split: PedesSplit, batch_size: int = 64
) -> tuple[dict[str, float], QueryOutcomes]:
    """The metrics of `evaluate_split`, and each query's own result in `split.queries()` order."""
    was_training = model.training
    model.eval()
    gallery = encode_gallery(model, split, batch_size)
    captions, query_pids = split.queries()
    queries = encode_queries(model, captions, batch_size)
    gallery_pids = torch.tensor([image.pid for image in split.images])
    outcomes = QueryOutcomes.empty(len(captions))
    outcomes.query_pids = torch.tensor(query_pids)
    metrics = retrieval_metrics_from_features(
        queries, gallery, torch.tensor(query_pids), gallery_pids, outcomes=outcomes
    )
    model.train(was_training)
    return metrics, outcomes


def evaluate_split(model, split: PedesSplit, batch_size: int = 64) -> dict[str, float]:
    """{"R1", "R5", "R10", "mAP", "mINP"} in percent, text to image, on `split`."""
    return evaluate_split_outcomes(model, split, batch_size)[0]
