"""The statistics every `compare` shares: the ratio bootstrap (cIoU) against a literal loop, seeds
of unequal count, and what an interval lets a report say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionloom.engine import compare
from visionloom.engine.compare import compare_outcomes, ratio_difference_bootstrap
from visionloom.results import supported


def _masks(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    union = torch.randint(50, 400, (2, count), generator=generator).double()
    intersection = (union * torch.rand(2, count, generator=generator)).round()
    return intersection, union


@pytest.mark.parametrize("grouped", [False, True])
def test_ratio_bootstrap_equals_a_literal_loop_over_the_same_draws(monkeypatch, grouped):
    intersection, union = _masks(120, 1)
    groups = torch.arange(120) // 4 if grouped else None  # 30 images of 4 expressions
    units = 30 if grouped else 120
    monkeypatch.setattr(compare, "RESAMPLE_CHUNK_ELEMENTS", 7 * units)  # several chunks
    low, high = ratio_difference_bootstrap(intersection, union, resamples=600, seed=5, groups=groups)
    generator = torch.Generator().manual_seed(5)
    members = [
        [
            i
            for i in range(120)
            if (groups is None and i == unit) or (groups is not None and groups[i] == unit)
        ]
        for unit in range(units)
    ]
    values = []
    for _ in range(600):
        picked = [
            i for unit in torch.randint(units, (units,), generator=generator).tolist() for i in members[unit]
        ]
        ciou = [float(intersection[row, picked].sum() / union[row, picked].sum()) for row in (0, 1)]
        values.append(ciou[0] - ciou[1])
    assert (low, high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-9)
    with pytest.raises(ValueError, match=r"expected \[2, Q\] each"):
        ratio_difference_bootstrap(intersection[:1], union[:1])


def test_a_single_seed_baseline_pairs_with_every_seed_and_unequal_seeds_do_not():
    generator = torch.Generator().manual_seed(0)
    model = (torch.rand(3, 80, generator=generator) < 0.7).double()  # [seeds, Q]
    baseline = (torch.rand(1, 80, generator=generator) < 0.3).double()
    result = compare_outcomes(model, baseline, resamples=300)
    assert result["per_seed_difference"] == pytest.approx((100 * (model.mean(1) - baseline.mean())).tolist())
    assert result["difference"] == pytest.approx(float(100 * (model.mean() - baseline.mean())))
    assert compare_outcomes(model, model[:2], resamples=100)["per_seed_difference"] == []
    with pytest.raises(ValueError, match="different items"):
        compare_outcomes(model, baseline[:, :40])


def test_a_report_says_only_what_the_interval_supports():
    pair = {"a": "A", "b": "B"}
    assert supported({**pair, "interval": [0.2, 3.0]}) == "A above B"
    assert supported({**pair, "interval": [-3.0, -0.1]}) == "A below B"
    assert supported({**pair, "interval": [-0.5, 2.0]}) == "no difference shown"


@pytest.mark.parametrize("value", [-1.4496, -1.4504, 0.0449, 12.3456, 2.25])
def test_a_figure_prints_the_same_from_the_report_and_from_its_results_file(value):
    # A table written from the full-precision report and one rendered from the filed (0.01 point)
    # figure must print the same digits; rounding straight to 0.1 prints -1.4 for -1.4496 while its
    # filed -1.45 prints -1.5 (or the reverse), and the docs would disagree with compare.md.
    filed = compare.filed_form({"difference": value})["difference"]
    assert compare.points_text(value) == f"{filed:+.1f}"
    assert compare.interval_text([value, -value]) == f"[{filed:+.1f}, {-filed:+.1f}]"
    assert compare.mean_std_text({"mean": value, "std": abs(value)}) == f"{filed:.1f} ± {abs(filed):.1f}"
