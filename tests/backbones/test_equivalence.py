"""The layer's embeddings are bit-identical to what each model itself inserts, from one tower pass."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import FAMILIES, QWEN_FAMILIES, assert_matches_model, cached_preset
from visionloom.backbones.doctor import CallCounter
from visionloom.backbones.tiny import build_preset

# Two images per batch, of different sizes, so per-image bookkeeping is exercised everywhere.
SIZES = [(90, 60), (50, 120)]


def _batch(adapter, image):
    images = [image(*size, seed=i) for i, size in enumerate(SIZES)]
    return adapter.build_inputs(images, ["<image> describe it", "what is <image> here"])


@pytest.mark.parametrize("name", FAMILIES)
def test_embeddings_bit_identical_and_logits_equal(name, image):
    adapter = cached_preset(name)
    inputs = _batch(adapter, image)
    tokens = assert_matches_model(adapter, inputs)
    with torch.no_grad(), CallCounter(adapter.vision_tower) as counter:
        ours = adapter.forward(inputs, tokens, output_hidden_states=True)
        reference = adapter.model_own_call(inputs)
    assert counter.calls == 1  # only the reference ran the tower; forward reused the tokens
    reference_hidden = reference.last_hidden_state if name == "tiny-t5gemma2" else reference.logits
    ours_hidden = ours.last_hidden_state if name == "tiny-t5gemma2" else ours.logits
    assert torch.equal(ours_hidden, reference_hidden)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", FAMILIES)
def test_several_images_per_sample_under_both_paddings(name, side, image):
    """One sample with one image, one with two of other sizes, padded on `side`: the embeddings are
    the model's own insertion and the logits its own forward, bit for bit."""
    adapter = cached_preset(name)
    before, adapter.tokenizer.padding_side = adapter.tokenizer.padding_side, side
    try:
        inputs = adapter.build_inputs(
            [[image(90, 60, seed=1)], [image(50, 120, seed=2), image(120, 120, seed=3)]],
            ["<image> describe it", "compare <image> with <image> please, which one is larger"],
        )
    finally:
        adapter.tokenizer.padding_side = before
    padded = inputs.attention_mask == 0
    assert bool(padded.any()) and bool(padded[:, 0].any() if side == "left" else padded[:, -1].any())
    assert [len(spans) for spans in inputs.image_spans] == [1, 2]
    tokens = assert_matches_model(adapter, inputs)
    with torch.no_grad():
        ours = adapter.forward(inputs, tokens)
        reference = adapter.model_own_call(inputs)
    if adapter.model.config.is_encoder_decoder:
        assert torch.equal(ours.last_hidden_state, reference.last_hidden_state)  # the encoder's
    else:
        assert torch.equal(ours.logits, reference.logits)


@pytest.mark.parametrize("name", FAMILIES)
def test_raw_features_project_to_the_embeddings(name, image):
    """raw and embeds come from one pass: the model's projector applied to raw gives embeds exactly."""
    adapter = cached_preset(name)
    inputs = _batch(adapter, image)
    tokens = adapter.encode_images(inputs)
    with torch.no_grad():
        projected = adapter.project(tokens.raw, tokens.geometries)  # one contract for every family
    assert torch.equal(projected, tokens.embeds)


@pytest.mark.parametrize(
    "overrides",
    [
        {"vision_feature_layer": [-3, -1], "vision_feature_select_strategy": "default"},
        {"vision_feature_layer": -2, "vision_feature_select_strategy": "full"},
        {"vision_feature_layer": [-2, -1], "vision_feature_select_strategy": "full"},
    ],
)
def test_llava_non_default_feature_settings(overrides, image):
    adapter = build_preset("tiny-llava", **overrides)
    inputs = _batch(adapter, image)
    tokens = assert_matches_model(adapter, inputs)
    layers = overrides["vision_feature_layer"]
    assert tokens.raw.shape[-1] == 64 * (len(layers) if isinstance(layers, list) else 1)
    expected = [65, 65] if overrides["vision_feature_select_strategy"] == "full" else [64, 64]
    assert tokens.counts == expected


def test_siglip_layer_minus_one_is_not_last_hidden_state(image):
    """LLaVA with a SigLIP tower and layer -1 uses the encoder output before post_layernorm."""
    adapter = build_preset("tiny-llava", vision="siglip", vision_feature_layer=-1)
    inputs = _batch(adapter, image)
    tokens = assert_matches_model(adapter, inputs)
    tower_out = adapter.vision_tower(inputs.model_inputs["pixel_values"])
    with torch.no_grad():
        from_last = adapter.project(tower_out.last_hidden_state.flatten(0, 1), tokens.geometries)
    assert not torch.allclose(from_last, tokens.embeds)
    assert "before post_layernorm" in adapter.describe()["feature layer(s)"]


@pytest.mark.parametrize("qwen", QWEN_FAMILIES)
def test_qwen_two_sizes_in_one_batch(qwen, image):
    adapter = cached_preset(qwen)
    step = adapter.factor  # 28 px per merged token (patch 14), 32 for Qwen3-VL (patch 16)
    inputs = adapter.build_inputs(
        [image(2 * step, 4 * step), image(5 * step, 3 * step, seed=1)], ["<image> a", "b <image>"]
    )
    tokens = assert_matches_model(adapter, inputs)
    assert tokens.grids == [(2, 4), (5, 3)]
    assert tokens.raw_counts == [4 * 8, 4 * 15]


def test_llava_next_two_aspect_ratios(image):
    adapter = cached_preset("tiny-llava-next")
    inputs = adapter.build_inputs([image(40, 90), image(100, 50, seed=1)], ["<image> a", "b <image>"])
    tokens = assert_matches_model(adapter, inputs)
    wide, tall = tokens.grids
    assert wide[1] > wide[0] and tall[0] > tall[1]


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-t5gemma2"])
def test_dynamic_path_is_bit_identical_to_stock_at_configured_size(name, image):
    stock = cached_preset(name)
    native = build_preset(name, native_resolution=True)  # same seed, same weights
    picture = image(224, 224)
    stock_inputs = stock.build_inputs([picture], ["<image> hi"])
    native_inputs = native.build_inputs([picture], ["<image> hi"])
    assert torch.equal(stock_inputs.input_ids, native_inputs.input_ids)
    stock_tokens = stock.encode_images(stock_inputs)
    native_tokens = native.encode_images(native_inputs)
    assert torch.equal(native_tokens.embeds, stock_tokens.embeds)
    assert torch.equal(native_tokens.embeds, stock.model_inserted_embeds(stock_inputs))


def test_t5gemma2_native_384x128_runs_through_encoder_and_decoder(image):
    adapter = cached_preset("tiny-t5gemma2", native=True)
    inputs = adapter.build_inputs(
        [image(384, 128), image(384, 128, seed=1)], ["<image> a man", "<image> a woman"]
    )
    tokens = adapter.encode_images(inputs)
    assert tokens.counts == [12, 12] and tokens.grids == [(6, 2), (6, 2)]
    assert tokens.embeds.shape[-1] == adapter.text_width
    decoder_ids = torch.tensor([[2, 20, 21], [2, 22, 23]])
    with torch.no_grad():
        out = adapter.forward(inputs, tokens, decoder_input_ids=decoder_ids)
    assert out.logits.shape[:2] == (2, 3)
    assert torch.equal(out.inputs_embeds[inputs.image_token_mask], tokens.embeds)
