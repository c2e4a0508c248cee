"""`prune eval pope` and `prune eval gqa`: every family answers the released formats by generating,
every pruner runs, and the written answers and metrics are the ones the model generates."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import FAMILIES
from tests.hub_checkpoints import checkpoint
from tests.pruning import test_gqa, test_pope
from visionloom.backbones import load
from visionloom.backbones.tiny import build_preset
from visionloom.cli import app
from visionloom.pruning.benchmarks import METRICS, read_benchmark
from visionloom.pruning.config import load_config
from visionloom.pruning.evaluate import PromptCollate, evaluate_pruning
from visionloom.pruning.generate import stop_token_ids

GENERATED_PRUNERS = "[random,tower-attention-merge,visionzip,text-attention,pdrop]"


def settings(benchmark: str, vlm, *extra: str):
    return load_config(
        benchmark,
        [
            f"vlm={vlm}",
            f"pruners={GENERATED_PRUNERS}",
            "keep_ratios=[1.0,0.5]",
            "max_new_tokens=3",
            "batch_size=3",
            "text_layer=0",
            *extra,
        ],
    )


def own_answers(adapter, questions, style: str, steps: int) -> list[str]:
    """The model's own `generate` on the same prompts (left-padded), decoded as prune eval decodes."""
    tokenizer = adapter.tokenizer
    before, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = PromptCollate(adapter, style)(questions)["inputs"]
    finally:
        tokenizer.padding_side = before
    with torch.no_grad():
        out = adapter.model.generate(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            **adapter.image_token_types(inputs),
            **inputs.model_inputs,
            max_new_tokens=steps,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[:, 1:] if adapter.model.config.is_encoder_decoder else out[:, inputs.input_ids.shape[1] :]
    stops, texts = stop_token_ids(adapter), []
    for row in new.tolist():
        cut = next((i for i, token in enumerate(row) if token in stops), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


@pytest.mark.parametrize("benchmark", ["pope", "gqa"])
@pytest.mark.parametrize("name", FAMILIES)
def test_released_benchmarks_with_generated_answers_for_every_family(name, benchmark, tmp_path):
    release = test_pope if benchmark == "pope" else test_gqa
    root = release.write_release(tmp_path / benchmark)
    vlm = tmp_path / name
    build_preset(name).save_pretrained(vlm)  # no chat template in a preset: the plain prompt
    report = evaluate_pruning(
        settings(benchmark, vlm, "prompt=plain"), root, tmp_path / "out", progress=False
    )
    assert set(report["results"]) == {"keep-all", *GENERATED_PRUNERS.strip("[]").split(",")}
    questions = read_benchmark(benchmark, root)
    metric = METRICS[benchmark]
    for pruner, by_ratio in report["results"].items():
        for ratio, row in by_ratio.items():
            lines = (tmp_path / "out" / "answers" / f"{pruner}-{ratio}.jsonl").read_text().splitlines()
            written = [json.loads(line) for line in lines]
            assert [w["question_id"] for w in written] == [q.question_id for q in questions]
            expected = metric([w["text"] for w in written], [q.gold for q in questions])
            assert {key: row[key] for key in expected} == expected, (pruner, ratio)
            assert row["image_tokens_kept"] <= report["results"]["keep-all"]["1.0"]["image_tokens_kept"]
    adapter = load(vlm)
    keep_all = [
        json.loads(line)["text"] for line in (tmp_path / "out" / "answers" / "keep-all-1.0.jsonl").open()
    ]
    assert keep_all == own_answers(adapter, questions, "plain", 3)
    table = (tmp_path / "out" / "prune_table.md").read_text()
    assert "| pdrop | 50% |" in table
    if benchmark == "pope":
        assert "| F1 % |" in table and "4 questions of pope (random)" in table
    else:
        assert "| F1 % |" not in table and "3 questions of gqa" in table


def test_gqa_from_the_cli_with_a_released_chat_template(tmp_path):
    """LLaVA-1.5 laid out as released (its chat_template.json, left padding), through the command line."""
    root = test_gqa.write_release(tmp_path / "gqa")
    vlm = checkpoint("llava-1.5-7b-hf")
    out = tmp_path / "out"
    command = [
        "prune", "eval", "gqa", "--data", str(root), "--vlm", str(vlm), "--out", str(out),
        "--set", "pruners=[random,visionzip]", "--set", "keep_ratios=[1.0,0.25]",
        "--set", "max_new_tokens=2", "--set", "batch_size=2",
    ]  # fmt: skip
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    # The same OUT again: refused in one line, what it holds untouched; --overwrite replaces it.
    written = (out / "results.json").read_text()
    again = CliRunner().invoke(app, command)
    assert again.exit_code != 0 and "Traceback" not in again.output
    assert f"{out} already holds" in " ".join(again.output.split()) and "--overwrite" in again.output
    assert (out / "results.json").read_text() == written
    replaced = CliRunner().invoke(app, [*command, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    record = json.loads((out / "results.json").read_text())
    assert record["kind"] == "prune_eval" and record["seeds"] == [0]
    report = record["figures"]
    assert report["answers"] == "generated, greedy, at most 2 tokens, chat prompt"
    questions = read_benchmark("gqa", root)
    adapter = load(vlm)
    keep_all = [json.loads(line)["text"] for line in (out / "answers" / "keep-all-1.0.jsonl").open()]
    assert keep_all == own_answers(adapter, questions, "chat", 2)
    prompt = PromptCollate(adapter, "chat")(questions[:1])["inputs"]
    decoded = adapter.tokenizer.decode(prompt.input_ids[0][prompt.attention_mask[0].bool()])
    assert decoded.startswith("USER: <image>") and decoded.endswith("ASSISTANT:")
    assert report["results"]["visionzip"]["0.25"]["image_tokens_kept"] == 144  # a quarter of 576


def test_bad_benchmark_input_is_one_line_naming_the_file(tmp_path):
    root = test_gqa.write_release(tmp_path / "gqa")
    (root / "images" / "n235859.jpg").unlink()
    result = CliRunner().invoke(
        app,
        ["prune", "eval", "gqa", "--data", str(root), "--vlm", str(tmp_path), "--out", str(tmp_path / "o")],
    )
    assert result.exit_code != 0
    assert "testdev_balanced_questions.json" in result.output and "question 20968379" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # nothing written before the data was read
    no_template = load_config("gqa", ["vlm=tiny-llava", "pruners=[random]"])  # a preset has no chat template
    with pytest.raises(ValueError, match="no chat template.*--set prompt=plain"):
        evaluate_pruning(
            no_template, test_gqa.write_release(tmp_path / "gqa2"), tmp_path / "o3", progress=False
        )
    assert not (tmp_path / "o3").exists()  # refused before anything was written
    learned = load_config("pope", ["vlm=x", "pruners=[learned]"])
    with pytest.raises(ValueError, match="'learned' trains on the scene questions"):
        evaluate_pruning(learned, root, tmp_path / "o2", progress=False)
