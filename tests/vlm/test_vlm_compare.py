"""`vlm compare`: each seed pretrained with its own weights and batches, the spread over seeds, the
validation curves, and a comparison that continues where it stopped."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
from typer.testing import CliRunner

from tests.helpers import results_renderer
from visionloom.cli import app
from visionloom.engine.compare import make_entries
from visionloom.vlm import compare

SMALL = [
    "train.steps=4",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.eval_every=2",
    "train.checkpoint_every=2",
]


def test_seeds_differ_report_their_spread_and_finished_seeds_are_read_back(
    scenes_root, tmp_path, monkeypatch
):
    say = []
    report = compare.run_comparison(
        make_entries(["llava"]),
        scenes_root,
        tmp_path,
        seeds=2,
        common_overrides=SMALL,
        progress=False,
        say=say.append,
    )
    runs = report["entries"]["llava"]["per_seed"]
    for seed, run in enumerate(runs):
        pretrained = json.loads((tmp_path / "llava" / f"seed{seed}" / "pretrain.json").read_text())
        for task in ("all", "where", "qa:what-color", "qa:where"):
            assert run[task] == pretrained["test_accuracy"][task], task
        assert run["val_where_by_step"] == [
            [2, pytest.approx(run["val_where_by_step"][0][1])],
            [4, pytest.approx(run["val_where_by_step"][1][1])],
        ]
        config = (tmp_path / "llava" / f"seed{seed}" / "run" / "config.yaml").read_text()
        assert f"seed: {seed}" in config
    # different seeds: different initial weights and batches, so different trained weights
    from safetensors.torch import load_file

    first, second = (load_file(str(tmp_path / "llava" / f"seed{s}" / "model.safetensors")) for s in (0, 1))
    assert any(not first[k].equal(second[k]) for k in first)
    summary = report["entries"]["llava"]["summary"]["where"]
    assert summary["mean"] == pytest.approx(statistics.fmean(r["where"] for r in runs))
    assert summary["std"] == pytest.approx(statistics.stdev(r["where"] for r in runs))
    assert "| **llava** | mean ± std |" in (tmp_path / "compare.md").read_text()
    filed = json.loads((tmp_path / "results.json").read_text())
    assert filed["kind"] == "vlm_compare"
    assert [run["steps"] for run in filed["figures"]["entries"]["llava"]["per_seed"]] == [4, 4]
    # The docs' table names the run length and shows the curve at a fifth, three fifths and the end.
    rendered = "\n".join(results_renderer().render_vlm_compare([filed]))
    assert "val locate % by step 0 / 2 / 4" in rendered and "4 steps each" in rendered
    curve = runs[0]["val_where_by_step"]
    assert f"| – / {curve[0][1]:.0f} / {curve[1][1]:.0f} |" in rendered
    assert (tmp_path / "compare.png").stat().st_size > 0

    def refuse(*args, **kwargs):
        raise AssertionError("a finished seed was pretrained again")

    monkeypatch.setattr(compare, "pretrain", refuse)

    def compare_again() -> dict:  # the same comparison read back, with nothing left to pretrain
        return compare.run_comparison(
            make_entries(["llava"]),
            scenes_root,
            tmp_path,
            seeds=2,
            common_overrides=SMALL,
            progress=False,
            say=lambda _: None,
        )

    again = compare_again()
    assert again["entries"] == report["entries"]
    # a run written before a setting existed compares equal while that setting keeps its default
    saved = tmp_path / "llava" / "seed0" / "run" / "config.yaml"
    saved.write_text(
        saved.read_text().replace("  select: best\n", "").replace("  evaluate_last: false\n", "")
    )
    assert "select:" not in saved.read_text()
    older = compare_again()
    assert older["entries"] == report["entries"]
    # a run whose report predates the kinds of question: its checkpoint answers the test split again
    pretrained = tmp_path / "llava" / "seed1" / "pretrain.json"
    filed = json.loads(pretrained.read_text())
    filed["test_accuracy"] = {k: v for k, v in filed["test_accuracy"].items() if ":" not in k}
    pretrained.write_text(json.dumps(filed))
    kinds_again = compare_again()
    assert kinds_again["entries"] == report["entries"]


def test_an_interrupted_seed_resumes_from_its_checkpoint(scenes_root, tmp_path, monkeypatch):
    from visionloom.engine.checkpoint import latest_checkpoint
    from visionloom.vlm import train as vlm_train

    compare.run_comparison(
        make_entries(["llava"]),
        scenes_root,
        tmp_path,
        seeds=1,
        common_overrides=SMALL,
        progress=False,
        say=lambda _: None,
    )
    finished = json.loads((tmp_path / "llava" / "seed0" / "pretrain.json").read_text())
    # a seed stopped after its step-2 checkpoint: no report, the later checkpoints gone
    run = tmp_path / "llava" / "seed0"
    (run / "pretrain.json").unlink()
    shutil.rmtree(run / "run" / "checkpoints" / "step_0000004")
    (run / "run" / "checkpoints" / "latest").write_text("step_0000002")
    assert latest_checkpoint(run / "run" / "checkpoints").name == "step_0000002"
    calls = []
    real = vlm_train.pretrain

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "pretrain", recording)
    said = []
    report = compare.run_comparison(
        make_entries(["llava"]),
        scenes_root,
        tmp_path,
        seeds=1,
        common_overrides=SMALL,
        progress=False,
        say=said.append,
    )
    assert calls and calls[0]["resume"] is True and any("continuing" in line for line in said)
    assert report["entries"]["llava"]["per_seed"][0]["all"] == pytest.approx(finished["test_accuracy"]["all"])


def test_a_bad_data_folder_is_named_before_any_folder(tmp_path):
    result = CliRunner().invoke(
        app, ["vlm", "compare", "llava", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "c")]
    )
    assert result.exit_code != 0 and "instances.json" in result.output
    assert not (tmp_path / "c").exists()
