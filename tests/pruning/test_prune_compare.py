"""`prune compare`: seeds of every pruner, mean ± std, paired intervals against random and keep-all,
and a comparison that reads finished seeds back."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import results_renderer
from visionloom.cli import app
from visionloom.engine.compare import paired_bootstrap
from visionloom.pruning import compare, evaluate
from visionloom.pruning.config import PruneConfig


def _config(directory) -> PruneConfig:
    config = PruneConfig(vlm=str(directory), max_questions=12, batch_size=6, keep_ratios=[1.0, 0.25])
    config.pruners = ["random", "tower-attention", "learned"]
    config.scorer.steps, config.scorer.batch_size = 2, 4
    return config


def test_compare_reports_each_seed_and_pairs_each_pruner_with_random_and_keep_all(
    scenes_root, scene_vlm, tmp_path, monkeypatch
):
    directory, _ = scene_vlm
    report = compare.run_comparison(
        _config(directory), scenes_root, tmp_path, seeds=2, resamples=500, progress=False, say=lambda _: None
    )
    rows = report["rows"]
    for seed in (0, 1):
        results = json.loads((tmp_path / f"seed{seed}" / "results.json").read_text())
        assert results["seeds"] == [seed]
        for name, by_ratio in results["figures"]["results"].items():
            for ratio, row in by_ratio.items():
                assert rows[name][ratio]["per_seed"][seed] == pytest.approx(row["accuracy"])
    # a deterministic pruner repeats exactly; the spread is the sample std of the seeds
    assert rows["tower-attention"]["0.25"]["std"] == 0.0
    random_row = rows["random"]["0.25"]
    assert random_row["std"] == pytest.approx(torch.tensor(random_row["per_seed"]).std().item())

    pairs = {(pair["a"], pair["b"]): pair for pair in report["pairs"]}
    assert set(pairs) == {
        ("random 25%", "keep-all 100%"),
        ("tower-attention 25%", "random 25%"),
        ("tower-attention 25%", "keep-all 100%"),
        ("learned 25%", "random 25%"),
        ("learned 25%", "keep-all 100%"),
    }
    versus = pairs["tower-attention 25%", "random 25%"]
    mean = lambda row: sum(row["per_seed"]) / len(row["per_seed"])  # noqa: E731
    assert versus["difference"] == pytest.approx(mean(rows["tower-attention"]["0.25"]) - mean(random_row))
    # the interval is the paired bootstrap of the per-question differences (seed-averaged)
    outcomes = [json.loads((tmp_path / f"seed{s}" / "question_outcomes.json").read_text()) for s in (0, 1)]
    per_question = torch.tensor(
        [
            [o["hits"]["tower-attention"]["0.25"] for o in outcomes],
            [o["hits"]["random"]["0.25"] for o in outcomes],
        ]
    ).double()  # [2 pruners, seeds, Q]
    differences = 100 * (per_question[0].mean(0) - per_question[1].mean(0))
    assert versus["interval"] == pytest.approx(list(paired_bootstrap(differences, 500)))
    low, high = versus["interval_by_group"]
    expected = "no difference shown" if low <= 0 <= high else versus["supports_by_image"]
    assert versus["supports_by_image"] == expected
    filed = json.loads((tmp_path / "results.json").read_text())["figures"]
    assert filed["pairs"][0]["difference"] == round(report["pairs"][0]["difference"], 2)
    assert filed["rows"]["random"]["0.25"]["mean"] == round(random_row["mean"], 2)
    # the filed form drops what it can be rebuilt from: constant per-seed lists, the sentences
    assert "per_seed" not in filed["rows"]["tower-attention"]["0.25"]
    assert "supports" not in filed["pairs"][0] and "supports_by_image" not in filed["pairs"][0]
    if len(set(random_row["per_seed"])) > 1:
        assert filed["rows"]["random"]["0.25"]["per_seed"] == [round(v, 2) for v in random_row["per_seed"]]
    # the docs' renderer says from the filed intervals what compare.json says
    rendered = "\n".join(
        results_renderer().render_prune_compare([json.loads((tmp_path / "results.json").read_text())])
    )
    # the VLM is named by its pretraining, read from the checkpoint's pretrain.json
    pretrained = json.loads((directory / "pretrain.json").read_text())
    assert (
        filed["vlm_pretraining"]["family"] == "llava"
        and filed["vlm_pretraining"]["steps"] == pretrained["steps"]
    )
    assert filed["vlm_pretraining"]["locate"] == round(pretrained["test_accuracy"]["where"], 2)
    assert f"**the llava scene VLM** ({pretrained['steps']} pretraining steps;" in rendered
    for pair in report["pairs"]:
        assert f"| {pair['a']} − {pair['b']} |" in rendered
        assert f"| {pair['supports_by_image']} |" in rendered
    table = (tmp_path / "compare.md").read_text()
    assert "| tower-attention 25% − random 25% |" in table and (tmp_path / "compare.png").stat().st_size > 0

    # Finished seeds are read back, not evaluated again; other settings are evaluated again.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished seed was evaluated again")

    monkeypatch.setattr(compare, "evaluate_pruning", refuse)
    again = compare.run_comparison(
        _config(directory), scenes_root, tmp_path, seeds=2, resamples=500, progress=False, say=lambda _: None
    )
    assert again["rows"] == rows
    monkeypatch.setattr(compare, "evaluate_pruning", evaluate.evaluate_pruning)
    changed = _config(directory)
    changed.max_questions = 6
    shorter = compare.run_comparison(
        changed, scenes_root, tmp_path, seeds=1, resamples=200, progress=False, say=lambda _: None
    )
    assert shorter["questions"] == 6


def test_a_vlm_without_a_pretrain_report_is_named_by_its_path_and_a_broken_report_is_refused(
    scenes_root, tmp_path
):
    assert compare.vlm_pretraining(None) is None
    assert compare.vlm_pretraining("org/released-vlm") is None
    assert compare.vlm_pretraining(str(tmp_path)) is None
    (tmp_path / "pretrain.json").write_text('{"family": "llava"}')
    with pytest.raises(ValueError, match=r"pretrain\.json: not a `vlm pretrain` report"):
        compare.vlm_pretraining(str(tmp_path))
    # prune compare names it before it evaluates anything or makes a folder
    with pytest.raises(ValueError, match=r"pretrain\.json: not a `vlm pretrain` report"):
        compare.run_comparison(
            PruneConfig(vlm=str(tmp_path)), scenes_root, tmp_path / "out", seeds=1, progress=False
        )
    assert not (tmp_path / "out").exists()


def test_compare_refuses_what_it_cannot_pair(scenes_root, scene_vlm, tmp_path):
    directory, _ = scene_vlm
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "prune",
            "compare",
            "pope",
            "--data",
            str(scenes_root),
            "--out",
            str(tmp_path / "c"),
            "--vlm",
            str(directory),
        ],
    )
    assert result.exit_code != 0 and "no per-question outcome to pair" in result.output
    assert not (tmp_path / "c").exists()
    result = runner.invoke(
        app, ["prune", "compare", "--data", str(scenes_root), "--out", str(tmp_path / "d")]
    )
    assert result.exit_code != 0 and "no VLM: give --vlm" in result.output
    args = ["--data", str(tmp_path / "none"), "--out", str(tmp_path / "e"), "--vlm", str(directory)]
    result = runner.invoke(app, ["prune", "compare", *args])
    assert result.exit_code != 0 and "no instances.json" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "e").exists()
