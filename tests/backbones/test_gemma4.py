"""What is particular to Gemma 4: aspect-kept resizing to a soft-token budget, patches pooled inside
the tower, bidirectional attention among an image's tokens built from mm_token_type_ids, and the
per-layer embeddings and KV sharing of the small checkpoints (E2B, E4B)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import (
    cached_preset,
    doctor_error_after,
    drop_weights,
    eager_weights_of,
    edit_json,
    keep_all_generation,
    model_generate,
)
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tiny import build_preset
from visionloom.pruning.decision import Decision
from visionloom.pruning.prefill import forward_pruned
from visionloom.pruning.pruners import PDrop, RandomPruner, TextAttention

runner = CliRunner()


def _inputs(adapter, image, side: str = "right"):
    before, adapter.tokenizer.padding_side = adapter.tokenizer.padding_side, side
    try:
        return adapter.build_inputs(
            [image(60, 150), image(200, 64, 1)], ["<image> what is here?", "and <image> a longer question"]
        )
    finally:
        adapter.tokenizer.padding_side = before


def test_the_aspect_ratio_is_kept_within_the_soft_token_budget():
    adapter = cached_preset("tiny-gemma4")
    budget = adapter.processor.image_processor.max_soft_tokens
    for size in [(60, 150), (150, 60), (112, 112), (3000, 500), (10, 14)]:
        geometry = adapter.geometry(*size)
        rows, cols = geometry.token_grid
        assert rows * cols == geometry.num_tokens <= budget
        assert geometry.pixel_size == (rows * 16, cols * 16)  # patch 8 x pooling 2
        if size[0] != size[1]:
            assert (rows > cols) == (size[0] > size[1])


def test_image_tokens_attend_both_ways_only_with_their_token_types(image):
    """The model builds the bidirectional image blocks from mm_token_type_ids alone: without them
    (inputs_embeds and positions as the layer gives them) the logits differ from its pixel forward;
    the layer passes them and equals it."""
    adapter = cached_preset("tiny-gemma4")
    inputs = _inputs(adapter, image)
    with torch.no_grad():
        reference = adapter.model_own_call(inputs).logits
        tokens = adapter.encode_images(inputs)
        ours = adapter.forward(inputs, tokens).logits
        embeds = adapter.insert(inputs, tokens)
        causal = adapter.model(inputs_embeds=embeds, attention_mask=inputs.attention_mask).logits
    assert torch.equal(ours, reference)
    real = inputs.attention_mask.bool()
    assert (causal - reference)[real].abs().max() > 1e-3


def test_tower_scores_are_the_real_patches_attention_averaged_over_each_pooled_block(image):
    adapter = cached_preset("tiny-gemma4")
    inputs = _inputs(adapter, image)
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        scores = adapter.tower_attention_scores(tokens)
        with eager_weights_of(adapter, adapter.vision_tower.encoder.layers[-1].self_attn) as captured:
            adapter.encode_images(inputs)
    weights = captured[0]  # [images, heads, max patches, max patches], padding masked
    for index, geometry in enumerate(tokens.geometries):
        rows, cols = geometry.patch_grid
        real = rows * cols
        received = weights[index, :, :real, :real].mean((0, 1))  # [real patches]
        expected = received.view(rows // 2, 2, cols // 2, 2).mean((1, 3)).flatten()
        torch.testing.assert_close(scores[index], expected)


@pytest.fixture(scope="module")
def small_gemma4():
    """The E2B/E4B kind: per-layer embeddings and the last two of four layers sharing KV."""
    return build_preset("tiny-gemma4", text_layers=4, per_layer=8, kv_shared=2)


@pytest.mark.parametrize("side", ["right", "left"])
def test_per_layer_embeddings_come_from_the_ids(small_gemma4, side, image):
    """The layer's forward equals the model's pixel forward bit for bit; the model given only
    inputs_embeds cannot recover the image rows' ids and fails."""
    adapter = small_gemma4
    inputs = _inputs(adapter, image, side)
    with torch.no_grad():
        reference = adapter.model_own_call(inputs).logits
        tokens = adapter.encode_images(inputs)
        assert torch.equal(adapter.forward(inputs, tokens).logits, reference)
        embeds = adapter.insert(inputs, tokens)
        with pytest.raises(RuntimeError, match="do not exactly match the embedding weights"):
            adapter.model(
                inputs_embeds=embeds,
                attention_mask=inputs.attention_mask,
                **adapter.image_token_types(inputs),
            )
        with pytest.raises(ImageTokenMismatch, match="no per-layer embeddings were given"):
            adapter.run_language_model(inputs, embeds, adapter.image_token_types(inputs))


def test_a_drop_before_the_first_layer_works_and_drops_inside_are_refused(small_gemma4, image):
    adapter = small_gemma4
    inputs = _inputs(adapter, image, "left")
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        everything = [torch.arange(count) for count in tokens.counts]
        assert torch.equal(
            forward_pruned(adapter, inputs, tokens, Decision(keep=everything)).logits,
            adapter.forward(inputs, tokens).logits,
        )
        half = RandomPruner(seed=0).decide(adapter, inputs, tokens, 0.5)
        assert forward_pruned(adapter, inputs, tokens, half).logits.shape[1] < inputs.input_ids.shape[1]
        for decision in (
            lambda: TextAttention(layer=0).decide(adapter, inputs, tokens, 0.5),
            lambda: forward_pruned(adapter, inputs, tokens, PDrop().decide(adapter, inputs, tokens, 0.5)),
            lambda: forward_pruned(adapter, inputs, tokens, Decision(keep=everything, from_layer=2)),
        ):
            with pytest.raises(
                ValueError, match=r"per-layer embeddings \(hidden_size_per_layer_input=8\) and KV"
            ):
                decision()


def test_generation_with_per_layer_embeddings_and_kv_sharing_is_the_models_own(small_gemma4, image):
    adapter = small_gemma4
    ours = keep_all_generation(adapter, _inputs(adapter, image, "left"), 4)
    with torch.no_grad():
        answers, logits = model_generate(adapter, _inputs(adapter, image, "left"), 4)
    assert ours.tokens == answers
    for mine, theirs in zip(ours.logits, logits, strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda d: drop_weights(d, "embed_vision"), "projector weights are missing"),
        (
            lambda d: edit_json(
                d / "processor_config.json", lambda c: c["image_processor"].update(pooling_kernel_size=3)
            ),
            "image processor pooling_kernel_size=3 but the vision config says 2",
        ),
        (
            lambda d: edit_json(d / "config.json", lambda c: c.update(image_token_id=c["boi_token_id"])),
            "the processor writes '<|image|>'",
        ),
    ],
    ids=["embed_vision weights missing", "processor pooling", "image token id"],
)
def test_doctor_names_what_is_wrong_with_a_gemma4_checkpoint(corrupt, expected, tmp_path):
    assert expected in doctor_error_after("tiny-gemma4", corrupt, tmp_path)
