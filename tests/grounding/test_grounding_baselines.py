"""Baselines that always predict a mask: fitted on the training split only, never empty."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from visionloom.data.refcoco import RefSample
from visionloom.grounding.baselines import evaluate_baselines, fit_priors, predict_box, predict_mask


def box_sample(x: float, y: float, w: float, h: float, split: str = "train", size: int = 100) -> RefSample:
    polygon = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return RefSample(0, 0, 0, Path("unused.png"), "the thing", split, (x, y, w, h), size, size, polygon)


def test_prior_box_is_centred_with_the_mean_size():
    priors = fit_priors([box_sample(0, 0, 20, 40), box_sample(50, 50, 40, 20)])  # mean 30 x 30 of 100
    assert priors.box_size == pytest.approx((0.3, 0.3))
    mask = predict_box(priors, 200, 100)  # another image size: fractions of its sides
    rows, columns = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
    assert len(rows) == 60 and len(columns) == 30
    assert rows[0] == (200 - 60) // 2 and columns[0] == (100 - 30) // 2


def test_objects_always_in_one_place_are_found_exactly():
    train = [box_sample(25, 25, 50, 50) for _ in range(4)]
    test = [box_sample(25, 25, 50, 50, "test") for _ in range(2)]
    results = evaluate_baselines(fit_priors(train), test)
    assert results["prior-box"]["cIoU"] == pytest.approx(100.0, abs=0.5)
    assert results["prior-mask"]["cIoU"] == pytest.approx(100.0, abs=3.0)


def test_on_scenes_both_predict_something(scenes_root):
    from visionloom.data.refcoco import read_refcoco

    samples = read_refcoco(scenes_root)
    train = [s for s in samples if s.split == "train"]
    priors = fit_priors(train)
    sample = next(s for s in samples if s.split == "test")
    assert predict_box(priors, sample.height, sample.width).any()
    assert predict_mask(priors, sample.height, sample.width).any()
    results = evaluate_baselines(priors, [s for s in samples if s.split == "test"])
    assert all(0.0 < metrics["cIoU"] < 100.0 for metrics in results.values())


def test_ground_baselines_command(scenes_root, tmp_path):
    from visionloom.cli import app

    out = tmp_path / "baselines.json"
    result = CliRunner().invoke(app, ["ground", "baselines", "--data", str(scenes_root), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "prior-box" in result.output and "prior-mask" in result.output
    assert out.is_file()
    bad = CliRunner().invoke(app, ["ground", "baselines", "--data", str(scenes_root), "--split", "testC"])
    assert bad.exit_code != 0 and "testC" in bad.output


def test_no_training_samples_is_an_error():
    with pytest.raises(ValueError, match="no samples to fit the priors on"):
        fit_priors([])
    assert torch.is_tensor(predict_box(fit_priors([box_sample(0, 0, 1, 1)]), 10, 10))
