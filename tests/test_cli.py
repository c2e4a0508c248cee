"""The `visionloom` command: doctor on every preset and on broken checkpoints, and preset save."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import FAMILIES, cached_preset, doctor_error_after, drop_weights, edit_json
from visionloom.cli import app

runner = CliRunner()


@pytest.mark.parametrize("name", FAMILIES)
def test_doctor_passes_on_every_preset(name):
    result = runner.invoke(app, ["doctor", name, "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0, report
    assert report["ok"]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["one tower pass"]["detail"].startswith("vision tower ran 1 time")
    assert "bit-identical" in checks["matches the model's own insertion"]["detail"]
    for fact in (
        "family",
        "patch size",
        "CLS policy",
        "feature layer(s)",
        "tokens per image",
        "vision width",
        "text width",
        "image token id",
        "attention",
        "pooling / merge",
        "vision tower",
    ):
        assert fact in report["facts"]


def test_doctor_table_and_native_person_size():
    result = runner.invoke(app, ["doctor", "tiny-t5gemma2", "--native", "--image-size", "384x128"])
    assert result.exit_code == 0, result.stdout
    assert "12 at 384x128 (grid 6x2)" in result.stdout
    assert "healthy" in result.stdout


def test_doctor_fails_on_missing_projector(tmp_path):
    cached_preset("tiny-deepseek-vl").save_pretrained(tmp_path)
    drop_weights(tmp_path, "aligner")
    result = runner.invoke(app, ["doctor", str(tmp_path), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert "projector weights are missing" in error and "aligner" in error


def test_doctor_fails_on_mm_tokens_disagreement(tmp_path):
    cached_preset("tiny-t5gemma2").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["encoder"]["mm_tokens_per_image"] = 25
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["doctor", str(tmp_path), "--json"])
    assert result.exit_code == 1
    assert "mm_tokens_per_image=25" in json.loads(result.stdout)["error"]


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda d: drop_weights(d, "visual.merger"), "projector weights are missing"),
        (
            lambda d: edit_json(
                d / "processor_config.json", lambda c: c["image_processor"].update(merge_size=1)
            ),
            "image processor merge_size=1 but the vision config says 2",
        ),
        (
            lambda d: edit_json(
                d / "config.json", lambda c: c.update(image_token_id=c["vision_start_token_id"])
            ),
            "the processor writes '<|image_pad|>'",
        ),
    ],
    ids=["merger weights missing", "processor merge size", "image token id"],
)
@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen3-vl"])
def test_doctor_names_what_is_wrong_with_a_qwen2_or_qwen3_vl_checkpoint(name, corrupt, expected, tmp_path):
    """The corruptions that matter for Qwen2-VL and Qwen3-VL: the merger (its projector), the merge
    size the processor counts placeholders with, and the id the model looks for."""
    assert expected in doctor_error_after(name, corrupt, tmp_path)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: drop_weights(d, "deepstack_merger_list.1"),
        # One more DeepStack block than the weights hold: its merger would be random.
        lambda d: edit_json(
            d / "config.json", lambda c: c["vision_config"].update(deepstack_visual_indexes=[0, 1, 2])
        ),
    ],
    ids=["deepstack merger weights missing", "more deepstack blocks than weights"],
)
def test_doctor_names_missing_deepstack_mergers_of_a_qwen3_vl_checkpoint(corrupt, tmp_path):
    error = doctor_error_after("tiny-qwen3-vl", corrupt, tmp_path)
    assert "projector weights are missing" in error and "deepstack_merger_list" in error


def test_doctor_rejects_a_size_that_does_not_fit_and_a_malformed_size():
    result = runner.invoke(app, ["doctor", "tiny-qwen2.5-vl", "--native", "--image-size", "100x56", "--json"])
    assert result.exit_code == 1 and "multiples of 28" in json.loads(result.stdout)["error"]
    result = runner.invoke(app, ["doctor", "tiny-llava", "--image-size", "big"])
    assert result.exit_code == 2 and "HEIGHTxWIDTH" in result.output


def test_preset_save_writes_a_checkpoint_that_doctor_accepts(tmp_path):
    result = runner.invoke(app, ["preset", "save", "tiny-qwen2.5-vl", str(tmp_path / "qwen")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "qwen" / "model.safetensors").is_file()
    assert runner.invoke(app, ["doctor", str(tmp_path / "qwen")]).exit_code == 0
    result = runner.invoke(app, ["preset", "save", "tiny-nothing", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown preset" in result.output


def test_preset_list_names_every_preset():
    result = runner.invoke(app, ["preset", "list"])
    assert result.exit_code == 0
    for name in FAMILIES:
        assert name in result.stdout


@pytest.mark.slow
def test_demo_compares_phase4_with_phase3_over_seeds(tmp_path):
    out = tmp_path / "demo"
    arguments = ["demo", "--out", str(out), "--ids", "20", "--steps", "3", "--vq-steps", "2", "--seeds", "2"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "results.json").read_text())
    assert record["kind"] == "demo" and record["seeds"] == [0, 1] and record["config_sha256"]
    assert record["machine"]["usable_cpus"] >= 1 and "load_average_at_start" in record["machine"]
    results = record["figures"]
    assert set(results["reference"]["baseline"]["test"]) == {"R1", "R5", "R10", "mAP", "mINP"}
    entries = results["comparison"]["entries"]
    assert list(entries) == ["phase3", "phase4"]
    for phase in ("phase3", "phase4"):
        assert [run["seed"] for run in entries[phase]["per_seed"]] == [0, 1]
        assert (out / "compare" / phase / "seed1" / "test_queries.safetensors").is_file()
        assert (out / f"search_{phase}.png").stat().st_size > 0
    (pair,) = results["comparison"]["pairs"]
    assert (pair["a"], pair["b"]) == ("phase4", "phase3")
    table = (out / "table.md").read_text()
    assert "| baseline (reference) | 1 |" in table and "| phase4 | 2 |" in table
    assert "phase4 − phase3: R@1" in table and "95% paired bootstrap interval" in table
    assert "resampling test queries" in table and "resampling identities" in table
    for report in ("loss_curves.png", "compare/compare.png", "compare/compare.md", "compare/per_seed.csv"):
        assert (out / report).stat().st_size > 0
    # run again with the same --out: every run is read back, nothing trains
    again = CliRunner().invoke(app, arguments)
    assert again.exit_code == 0 and again.output.count("finished in an earlier run") == 5


@pytest.mark.slow
def test_demo_quick_learns_well_above_chance(tmp_path):
    out = tmp_path / "quick"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())["figures"]
    assert results["comparison"] is None
    baseline = results["reference"]["baseline"]
    assert baseline["steps"] == 200
    # 60 identities: 12 in test, 4 images each, so chance R@1 is 1/12.
    assert results["chance_R1"] == pytest.approx(100 / 12)
    assert baseline["test"]["R1"] > 2 * results["chance_R1"]


def test_demo_rejects_unknown_phases():
    result = CliRunner().invoke(app, ["demo", "--phases", "baseline,phase9"])
    assert result.exit_code != 0
    assert "phase9" in result.output


@pytest.mark.slow
def test_scenes_pretrain_ground_eval_show_from_the_command_line(tmp_path):
    runner = CliRunner()
    data, vlm, run = tmp_path / "scenes", tmp_path / "vlm", tmp_path / "ground"
    result = runner.invoke(app, ["data", "synth-scenes", str(data), "--scenes", "20", "--seed", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "vlm",
            "pretrain",
            str(vlm),
            "--data",
            str(data),
            "--set",
            "train.steps=2",
            "--set",
            "train.batch_size=4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (vlm / "config.json").is_file() and (vlm / "pretrain.json").is_file()
    small = ["--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "head.width=8"]
    result = runner.invoke(
        app, ["ground", "train", "llava", "--vlm", str(vlm), "--data", str(data), "--out", str(run), *small]
    )
    assert result.exit_code == 0, result.output
    assert "refined" in result.output and "cIoU" in result.output
    result = runner.invoke(
        app, ["ground", "eval", str(run), "--data", str(data), "--json", str(tmp_path / "m.json")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(
        (run / "test_metrics.json").read_text()
    )
    result = runner.invoke(app, ["ground", "show", str(run), "--data", str(data), "--n", "3"])
    assert result.exit_code == 0, result.output
    assert len(list((run / "show").glob("*.png"))) == 3


def test_ground_train_without_a_vlm_says_how_to_give_one(tmp_path):
    result = CliRunner().invoke(
        app, ["ground", "train", "llava", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0
    assert "--vlm" in result.output


def test_scene_commands_name_the_bad_setting(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "synth-scenes", str(tmp_path / "s"), "--scenes", "5"])
    assert result.exit_code != 0 and "--scenes 5" in result.output
    result = runner.invoke(
        app, ["vlm", "pretrain", str(tmp_path / "v"), "--family", "gpt", "--data", str(tmp_path)]
    )
    assert result.exit_code != 0 and "--family 'gpt'" in result.output
    result = runner.invoke(
        app, ["prune", "eval", "scenes", "--data", str(tmp_path), "--out", str(tmp_path / "p")]
    )
    assert result.exit_code != 0 and "--vlm" in result.output


def test_vq_fit_restart_option_reaches_the_fit_and_refuses_negatives(pedes_root, tmp_path):
    runner = CliRunner()
    common = ["retrieval", "vq", "fit", str(pedes_root), "--steps", "10"]
    on = runner.invoke(app, [*common, "--out", str(tmp_path / "on"), "--restart-every", "4"])
    off = runner.invoke(app, [*common, "--out", str(tmp_path / "off"), "--restart-every", "0"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    printed_on, printed_off = (" ".join(result.output.split()) for result in (on, off))  # undo wrapping
    assert "'codes_restarted': 0" in printed_off and "'codes_restarted': 0" not in printed_on
    bad = runner.invoke(app, [*common, "--out", str(tmp_path / "bad"), "--restart-every", "-1"])
    assert bad.exit_code != 0 and "--restart-every" in bad.output
