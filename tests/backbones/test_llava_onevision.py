"""What is particular to LLaVA-OneVision: the any-res-max cap that shrinks large tile maps, its
newline tokens, the processor settings that must match the model, and its checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import cached_preset, encoded_batch
from visionloom.backbones import load
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tiny import build_preset
from visionloom.cli import app
from visionloom.pruning.apply import prune_sequence
from visionloom.pruning.pruners import RandomPruner


@pytest.mark.parametrize(
    "size, grid",
    [
        ((56, 112), (4, 8)),  # 1x2 tiles: 32 features, exactly two views' worth: kept as is
        ((112, 112), (5, 5)),  # 2x2 tiles: 64 features, r = sqrt(64 / 32) = 1.41 > 1.1: 8x8 -> 5x5
        ((168, 168), (5, 5)),  # 3x3 tiles: 12x12, r = sqrt(144 / 32) = 2.12: int(12 // 2.12) = 5
    ],
)
def test_the_cap_shrinks_large_tile_maps_as_model_and_processor_do(size, grid, image):
    adapter = cached_preset("tiny-llava-onevision")
    rows, cols = adapter.packed_grid(*size)
    side = 4  # 56-px tiles, patch 14
    geometry = adapter.geometry(*size)
    inputs = adapter.build_inputs([image(*size)], ["<image> hi"])
    tokens = adapter.encode_images(inputs)
    assert geometry.token_grid == (rows, cols)
    assert geometry.num_tokens == side * side + rows * (cols + 1) == int(inputs.image_token_mask.sum())
    assert tokens.counts == [geometry.num_tokens]
    assert torch.equal(adapter.model_inserted_embeds(inputs), tokens.embeds)
    full_rows, full_cols = super(type(adapter), adapter).packed_grid(*size)  # LLaVA-NeXT's, no cap
    ratio = math.sqrt(full_rows * full_cols / (2 * side * side))
    if ratio > 1.1:
        assert (rows, cols) == (int(full_rows // ratio), int(full_cols // ratio)) and rows < full_rows
    else:
        assert (rows, cols) == (full_rows, full_cols)
    assert (rows, cols) == grid


def test_newlines_close_each_row_and_are_never_pruned(image):
    adapter = cached_preset("tiny-llava-onevision")
    inputs, _, tokens = encoded_batch(adapter, image)
    newlines = adapter.structural_offsets(tokens.geometries[0])
    rows, cols = tokens.geometries[0].token_grid
    assert len(newlines) == rows and newlines[0] == 16 + cols  # after the base view and the first row
    assert torch.equal(
        tokens.per_image()[0][list(newlines)], adapter.model.model.image_newline.expand(rows, -1)
    )
    assert adapter.tower_attention_scores(tokens)[0][list(newlines)].isnan().all()
    decision = RandomPruner().decide(adapter, inputs, tokens, 0.11)
    assert set(newlines) <= set(decision.keep[0].tolist())
    prune_sequence(adapter, inputs, tokens, decision)


@pytest.mark.parametrize(
    "setting, value, message",
    [
        (
            "vision_aspect_ratio",
            "anyres_max_9",
            "processor vision_aspect_ratio='anyres_max_9' but the model gives 'anyres_max_2'",
        ),
        ("num_image_tokens", 25, "processor num_image_tokens=25 but the model gives 16"),
        ("vision_feature_select_strategy", "default", "processor vision_feature_select_strategy='default'"),
    ],
)
def test_processor_settings_that_disagree_with_the_model_are_refused(setting, value, message):
    adapter = build_preset("tiny-llava-onevision")
    setattr(adapter.processor, setting, value)
    with pytest.raises(ImageTokenMismatch, match=message):
        type(adapter)(adapter.model, adapter.processor)


def test_a_saved_checkpoint_loads_with_its_processor_settings_and_passes_the_doctor(tmp_path, image):
    adapter = cached_preset("tiny-llava-onevision")
    adapter.save_pretrained(tmp_path / "ov")
    reloaded = load(tmp_path / "ov")
    assert (
        reloaded.processor.vision_aspect_ratio == "anyres_max_2" and reloaded.processor.num_image_tokens == 16
    )
    picture = image(112, 168, 1)
    assert reloaded.tokens_per_image(112, 168) == adapter.tokens_per_image(112, 168)
    ours = reloaded.build_inputs([picture], ["<image> hi"])
    with torch.no_grad():
        assert torch.equal(
            reloaded.forward(ours).logits,
            adapter.forward(adapter.build_inputs([picture], ["<image> hi"])).logits,
        )
    assert CliRunner().invoke(app, ["doctor", str(tmp_path / "ov")]).exit_code == 0
