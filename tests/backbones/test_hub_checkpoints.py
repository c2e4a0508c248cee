"""Checkpoints as the hub ships them (real config values, every processor layout a family has
shipped): they load through `visionloom.backbones.load`, pass doctor with the published token
counts, load in a dtype that suits the device, and every way of getting them wrong is a named
cause, never a traceback."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.hub_checkpoints import RELEASES, checkpoint, edited_copy
from visionloom.backbones import ImageTokenMismatch, load
from visionloom.backbones.doctor import run_doctor
from visionloom.cli import app

# Tokens per image the releases publish (model cards, papers), at (height, width).
PUBLISHED = {
    "llava-1.5-7b-hf": {(336, 336): 576},
    "llava-1.5-7b-hf-2023": {(336, 336): 576},
    "llava-v1.6-mistral-7b-hf": {(336, 336): 1176, (480, 640): 2340},
    "qwen2.5-vl-3b-instruct": {(448, 448): 256, (480, 640): 391},
    # 32 px per token (patch 16, merge 2), at least 65536 pixels: 256x256 for a 100x100 image.
    "qwen3-vl-4b-instruct": {(448, 448): 196, (480, 640): 300, (100, 100): 64},
    "gemma-3-4b-it": {(896, 896): 256, (480, 640): 256},
    "t5gemma-2-270m-270m": {(896, 896): 256},
    "deepseek-vl-1.3b-chat": {(384, 384): 576},
    # 48 px per soft token (patch 16, pooling 3), at most 280: as an independent implementation's
    # tests tabulate them (896x896 -> 768x768, a 20x20 image scaled up alike, 10x10000 -> 48x13440).
    "gemma-4-e2b-it": {(896, 896): 256, (20, 20): 256, (10, 10000): 280},
}


def picture(height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(height * 7 + width)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def placeholders(adapter, height: int, width: int) -> int:
    """How many image placeholders the checkpoint's own processor writes for one image."""
    inputs = adapter.build_inputs([picture(height, width)], ["<image> describe the image"])
    return int(inputs.image_token_mask.sum())


@pytest.mark.parametrize("name", list(RELEASES))
def test_release_loads_passes_doctor_and_gives_the_published_counts(name):
    adapter = load(checkpoint(name))
    for (height, width), count in PUBLISHED[name].items():
        assert adapter.tokens_per_image(height, width) == count, (height, width)
        assert placeholders(adapter, height, width) == count, (height, width)
    size = next(iter(PUBLISHED[name]))
    report = run_doctor(str(checkpoint(name)), size)
    assert report.ok, (report.error, [c.detail for c in report.checks])
    assert report.facts["tokens per image"].startswith(f"{PUBLISHED[name][size]} at")


def test_t5gemma2_release_gives_12_tokens_at_384x128_on_the_native_path():
    adapter = load(checkpoint("t5gemma-2-270m-270m"), native_resolution=True)
    assert adapter.tokens_per_image(384, 128) == 12
    assert adapter.geometry(384, 128).token_grid == (6, 2)
    assert placeholders(adapter, 384, 128) == 12
    report = run_doctor(str(checkpoint("t5gemma-2-270m-270m")), (384, 128), native=True)
    assert report.ok, report.error


@pytest.mark.parametrize("name", ["qwen3-vl-4b-instruct", "gemma-4-e2b-it"])
def test_releases_whose_language_model_takes_more_than_inputs_embeds_match_the_models_own_forward(name):
    """Qwen3-VL's three DeepStack sets, Gemma 4 E2B's per-layer embeddings, KV sharing and left
    padding: the layer's logits are the model's own pixel forward, bit for bit."""
    adapter = load(checkpoint(name))
    inputs = adapter.build_inputs(
        [picture(480, 640), picture(300, 200)],
        ["<image> describe the image", "and <image> this one, briefly"],
    )
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        assert torch.equal(adapter.forward(inputs, tokens).logits, adapter.model_own_call(inputs).logits)
    if name == "qwen3-vl-4b-instruct":
        assert len(tokens.deepstack) == 3
    else:
        assert adapter.layer_drop_problem() is not None  # per-layer embeddings and KV sharing
        assert bool((inputs.attention_mask[:, 0] == 0).any())  # the release's tokenizer pads left


def _qwen_layout(layout: str):
    """Edits that turn the released Qwen layout into the others checkpoints have shipped."""

    def edit(files):
        image = dict(files["preprocessor_config.json"])
        if layout == "flat processor_config beside preprocessor_config":
            files["processor_config.json"] = {"processor_class": "Qwen2_5_VLProcessor"}
        elif layout == "nested processor_config (transformers 5 save)":
            files["processor_config.json"] = {
                "image_processor": image,
                "processor_class": "Qwen2_5_VLProcessor",
            }
            files["preprocessor_config.json"] = None
        elif layout == "image settings flat in processor_config":
            files["processor_config.json"] = image
            files["preprocessor_config.json"] = None

    return edit


@pytest.mark.parametrize(
    "layout",
    [
        "as released",
        "flat processor_config beside preprocessor_config",
        "nested processor_config (transformers 5 save)",
        "image settings flat in processor_config",
    ],
)
def test_qwen_loads_from_every_processor_layout(layout, tmp_path):
    directory = edited_copy("qwen2.5-vl-3b-instruct", tmp_path, _qwen_layout(layout))
    adapter = load(directory)
    assert adapter.processor.image_processor.size["longest_edge"] == 12845056  # the release's max_pixels
    assert placeholders(adapter, 448, 448) == 256


def test_qwen_without_image_settings_names_the_files_it_looked_for(tmp_path):
    def edit(files):
        files["preprocessor_config.json"] = None

    directory = edited_copy("qwen2.5-vl-3b-instruct", tmp_path, edit)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load(directory)


def test_older_llava_processor_is_filled_from_the_model_config_and_says_so_once(tmp_path, caplog):
    directory = edited_copy("llava-1.5-7b-hf-2023", tmp_path, lambda files: None)
    with caplog.at_level(logging.WARNING, logger="visionloom"):
        adapter = load(directory)
        load(directory)
    processor = adapter.processor
    assert (processor.patch_size, processor.vision_feature_select_strategy) == (14, "default")
    assert processor.num_additional_image_tokens == 1
    said = [r.message for r in caplog.records if "do not set" in r.message]
    assert len(said) == 1 and "patch_size=14" in said[0] and str(directory) in said[0]


def test_weights_load_in_float32_on_cpu_and_in_the_checkpoints_dtype_when_asked():
    for name, released in (("llava-1.5-7b-hf", torch.float16), ("qwen2.5-vl-3b-instruct", torch.bfloat16)):
        dtypes = {p.dtype for p in load(checkpoint(name)).model.parameters()}
        assert dtypes == {torch.float32}, name
        dtypes = {p.dtype for p in load(checkpoint(name), dtype="auto").model.parameters()}
        assert dtypes == {released}, name
    # T5Gemma2's encoder parts carry a dtype of their own in config.json; the policy still holds.
    dtypes = {p.dtype for p in load(checkpoint("t5gemma-2-270m-270m")).model.parameters()}
    assert dtypes == {torch.float32}
    with pytest.raises(ValueError, match="float8"):
        load(checkpoint("llava-1.5-7b-hf"), dtype="float8")


def test_doctor_in_half_precision_sums_in_float32():
    report = run_doctor(str(checkpoint("llava-1.5-7b-hf")), dtype="float16")
    assert report.ok, report.error
    assert report.facts["weights"].startswith("torch.float16")
    adapter = load(checkpoint("llava-1.5-7b-hf"), dtype="float16")
    from visionloom.backbones.doctor import test_image

    size = adapter.configured_image_size()
    with torch.no_grad():
        embeds = adapter.encode_images(
            adapter.build_inputs([test_image(*size)], ["<image> describe the image"])
        ).embeds
    reported = next(c.detail for c in report.checks if c.name == "embeddings non-zero")
    assert reported == f"|embeds| sum {float(embeds.float().abs().sum()):.3g}"


# ------------------------------------------------------------------ named causes
def _set(file: str, *path_and_value):
    *path, value = path_and_value

    def edit(files):
        target = files[file]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


BROKEN = {
    "image token the processor never writes": (
        "llava-1.5-7b-hf",
        _set("config.json", "image_token_index", 32001),
        ["image_token_id=32001", "'<image>' (id 32000)"],
    ),
    "processor crop size disagrees with the tower": (
        "llava-1.5-7b-hf",
        _set("preprocessor_config.json", "crop_size", {"height": 224, "width": 224}),
        ["224x224", "image_size is 336"],
    ),
    "any-res grids differ": (
        "llava-v1.6-mistral-7b-hf",
        _set("preprocessor_config.json", "image_grid_pinpoints", [[336, 672], [672, 336]]),
        ["image_grid_pinpoints differ", "[[336, 672], [672, 336]]", "preprocessor_config.json"],
    ),
    "Gemma3 processor expands another count": (
        "gemma-3-4b-it",
        _set("processor_config.json", "image_seq_length", 64),
        ["image_seq_length=64", "mm_tokens_per_image=256"],
    ),
    "DeepSeek processor count": (
        "deepseek-vl-1.3b-chat",
        _set("processor_config.json", "num_image_tokens", 577),
        ["num_image_tokens=577", "576 patches"],
    ),
    "config.json that is not JSON": ("deepseek-vl-1.3b-chat", None, ["config.json", "not valid JSON"]),
    "a wrong type deep in the processor": (
        "qwen2.5-vl-3b-instruct",
        _set("preprocessor_config.json", "max_pixels", "many"),
        ["while running", "TypeError"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_doctor_names_the_cause_and_never_shows_a_traceback(case, tmp_path):
    name, edit, expected = BROKEN[case]
    directory = edited_copy(name, tmp_path, edit or (lambda files: None))
    if edit is None:
        (directory / "config.json").write_text("{ not json")
    result = CliRunner().invoke(app, ["doctor", str(directory), "--json"])
    assert result.exit_code == 1, result.output
    assert (
        "Traceback" not in result.output
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    report = json.loads(result.output)
    assert report["ok"] is False and report["error"]
    for part in expected:
        assert part in report["error"], (part, report["error"])


def test_doctor_cli_passes_a_release_and_refuses_a_bad_dtype():
    runner = CliRunner()
    result = runner.invoke(app, ["doctor", str(checkpoint("deepseek-vl-1.3b-chat")), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["facts"]["weights"].startswith("torch.float32")
    result = runner.invoke(app, ["doctor", str(checkpoint("deepseek-vl-1.3b-chat")), "--dtype", "fp8"])
    assert result.exit_code == 2 and "fp8" in result.output


def test_a_mismatched_image_token_is_refused_at_load_not_as_a_count(tmp_path):
    directory = edited_copy("qwen2.5-vl-3b-instruct", tmp_path, _set("config.json", "image_token_id", 151654))
    with pytest.raises(ImageTokenMismatch, match="'<\\|image_pad\\|>' \\(id 151655\\)"):
        load(directory)
