"""Each loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from visionloom.retrieval.loss import generation_loss, id_loss, itc_loss, sdm_loss

EYE = torch.eye(2)


def test_itc_on_orthogonal_pairs():
    # logits = scale * I; each row's cross-entropy is log(1 + e^-scale).
    scale = 2.0
    assert itc_loss(EYE, EYE, scale).item() == pytest.approx(math.log(1 + math.exp(-scale)))


def _sdm_row(p_match: float, targets: list[float], eps: float = 1e-8) -> float:
    predicted = [p_match, 1 - p_match]
    return sum(p * (math.log(p) - math.log(t + eps)) for p, t in zip(predicted, targets, strict=True))


def test_sdm_distinct_identities():
    scale = 3.0
    p = math.exp(scale) / (math.exp(scale) + 1)  # softmax([scale, 0])
    expected = 2 * _sdm_row(p, [1.0, 0.0])  # image->text and text->image, each a mean over two equal rows
    assert sdm_loss(EYE, EYE, torch.tensor([0, 1]), scale).item() == pytest.approx(expected, rel=1e-6)


def test_sdm_image_id_label_smoothing():
    # Same identity, different images: labels [[1, .3], [.3, 1]], normalised by 1.3.
    scale = 3.0
    p = math.exp(scale) / (math.exp(scale) + 1)
    targets = [1 / 1.3, 0.3 / 1.3]
    expected = 2 * _sdm_row(p, targets)
    got = sdm_loss(EYE, EYE, torch.tensor([5, 5]), scale, image_ids=torch.tensor([0, 1]))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    without_smoothing = sdm_loss(EYE, EYE, torch.tensor([5, 5]), scale)
    assert without_smoothing.item() == pytest.approx(2 * _sdm_row(p, [0.5, 0.5]), rel=1e-6)


def test_id_loss_averages_both_modalities():
    image_logits = torch.tensor([[2.0, 0.0]])
    text_logits = torch.tensor([[0.0, 1.0]])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert id_loss(image_logits, text_logits, torch.tensor([0])).item() == pytest.approx(expected)


def test_generation_loss_ignores_masked_positions():
    logits = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 0.0, 9.0]]])
    targets = torch.tensor([[0, -100]])
    expected = -math.log(math.exp(3) / (math.exp(3) + 2))
    assert generation_loss(logits, targets).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="do not match targets"):
        generation_loss(logits, torch.tensor([[0]]))
