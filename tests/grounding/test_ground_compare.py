"""`ground compare`: seeds of each grounding config beside the baselines, mean ± std, paired
intervals of cIoU (pooled), mIoU and P@0.5, and a comparison that reads finished runs back."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import results_renderer
from visionloom.cli import app
from visionloom.engine.compare import make_entries, ratio_difference_bootstrap
from visionloom.grounding import compare
from visionloom.grounding.baselines import baselines_per_split
from visionloom.grounding.metrics import metrics_from_outcomes

SMALL = [
    "train.steps=2",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.checkpoint_every=2",
    "train.eval_every=2",
    "head.width=8",
]


def _compare(scenes_root, out, vlm, **kwargs):
    entries = make_entries(["llava", "llava-control", "prior-box"])
    return compare.run_comparison(
        entries,
        scenes_root,
        out,
        seeds=2,
        vlm=vlm,
        common_overrides=SMALL,
        resamples=400,
        progress=False,
        say=lambda _: None,
        **kwargs,
    )


def test_compare_trains_each_seed_scores_baselines_and_pairs_expressions(
    scenes_root, scene_vlm, tmp_path, monkeypatch
):
    directory, _ = scene_vlm
    report = _compare(scenes_root, tmp_path, str(directory))
    entries = report["entries"]
    for seed in (0, 1):
        run = tmp_path / "llava" / f"seed{seed}"
        summary = json.loads((run / "summary.json").read_text())
        assert entries["llava"]["per_seed"][seed]["coarse_cIoU"] == summary["test"]["coarse_cIoU"]
        # the per-expression outcomes give back the run's own metrics
        outcome = json.loads((run / "sample_outcomes.json").read_text())["test"]
        for mask in ("coarse", "refined"):
            recomputed = metrics_from_outcomes(
                torch.tensor(outcome[mask]["intersection"]), torch.tensor(outcome[mask]["union"])
            ).tolist()
            expected = [summary["test"][f"{mask}_{m}"] for m in ("cIoU", "mIoU", "P@0.5")]
            assert recomputed == pytest.approx(expected)
        config = (run / "config.yaml").read_text()
        assert f"seed: {seed}" in config and str(directory) in config  # --vlm went to the config naming none
    assert "tiny-llava" in (tmp_path / "llava-control" / "seed0" / "config.yaml").read_text()
    # the baseline is the same fit `ground baselines` makes, one entry without seeds
    _, baselines = baselines_per_split(scenes_root, "test")
    box = entries["prior-box"]
    assert len(box["per_seed"]) == 1 and box["summary"]["coarse_cIoU"]["std"] == 0.0
    assert box["summary"]["coarse_cIoU"]["mean"] == pytest.approx(baselines["test"]["prior-box"]["cIoU"])

    pairs = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert set(pairs) == {("llava-control", "llava"), ("prior-box", "llava")}
    assert "refined" in pairs["llava-control", "llava"] and "refined" not in pairs["prior-box", "llava"]
    # pooled cIoU: every seed's intersections over every seed's unions, and its paired interval
    sides = []
    for name in ("llava-control", "llava"):
        outcomes = [
            json.loads((tmp_path / name / f"seed{s}" / "sample_outcomes.json").read_text())["test"]["coarse"]
            for s in (0, 1)
        ]
        sides.append([torch.tensor([o[k] for o in outcomes]).double() for k in ("intersection", "union")])
    found = pairs["llava-control", "llava"]["coarse"]["cIoU"]
    pooled = [100 * float(i.sum() / u.sum()) for i, u in sides]
    assert found["difference"] == pytest.approx(pooled[0] - pooled[1])
    numerators = torch.stack([sides[0][0].mean(0), sides[1][0].mean(0)])
    denominators = torch.stack([sides[0][1].mean(0), sides[1][1].mean(0)])
    low, high = ratio_difference_bootstrap(numerators, denominators, 400)
    assert found["interval"] == pytest.approx([100 * low, 100 * high])
    assert report["expressions"] == len(
        json.loads((tmp_path / "llava" / "seed0" / "sample_outcomes.json").read_text())["test"]["samples"]
    )
    assert "| llava-control − llava | coarse | cIoU |" in (tmp_path / "compare.md").read_text()
    # the results file drops what it can be rebuilt from, and the docs' renderer rebuilds it
    filed = json.loads((tmp_path / "results.json").read_text())
    assert filed["kind"] == "ground_compare"
    filed_pair = filed["figures"]["pairs"][0]["coarse"]["cIoU"]
    assert "supports" not in filed_pair and "per_seed_difference" not in filed_pair
    rendered = "\n".join(results_renderer().render_ground_compare([filed]))
    local_table = (tmp_path / "compare.md").read_text()
    filed_pairs = {(pair["a"], pair["b"]): pair for pair in filed["figures"]["pairs"]}
    for pair in report["pairs"]:
        for mask in ("coarse", "refined"):
            for metric, found in pair.get(mask, {}).items():
                # the docs (from the results file) and compare.md (from the full-precision report)
                # print the same digits: both from the figure as filed
                difference = filed_pairs[pair["a"], pair["b"]][mask][metric]["difference"]
                assert difference == pytest.approx(found["difference"], abs=0.005)
                row = f"| {pair['a']} − {pair['b']} | {mask} {metric} | {difference:+.1f} |"
                assert row in rendered and found["supports"] in rendered.split(row)[1].split("\n")[0]
                assert f"| {pair['a']} − {pair['b']} | {mask} | {metric} | {difference:+.1f} |" in local_table
    assert (tmp_path / "compare.png").stat().st_size > 0

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare, "train_grounding", refuse)
    again = _compare(scenes_root, tmp_path, str(directory))
    assert again["entries"] == entries and again["pairs"] == report["pairs"]


def test_compare_names_a_missing_vlm_and_a_missing_split_before_any_folder(scenes_root, tmp_path):
    with pytest.raises(ValueError, match="llava: its config names no VLM; give --vlm DIR"):
        _compare(scenes_root, tmp_path / "a", None)
    assert not (tmp_path / "a").exists()
    result = CliRunner().invoke(
        app,
        [
            "ground",
            "compare",
            "llava-control",
            "prior-mask",
            "--data",
            str(scenes_root),
            "--out",
            str(tmp_path / "b"),
            "--split",
            "testA",
        ],
    )
    assert result.exit_code != 0 and "--split 'testA'" in result.output
    assert not (tmp_path / "b").exists()
