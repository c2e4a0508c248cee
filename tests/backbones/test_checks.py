"""Each seed's error is a test of its message; each silent error the layer guards is a test too."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from tests.helpers import QWEN_FAMILIES, cached_preset
from visionloom.backbones import ImageTokenMismatch, MultimodalInputs
from visionloom.backbones.checks import check_attention_weights
from visionloom.backbones.tiny import build_preset


def test_seed_000_projection_skipped_names_the_width_not_just_the_counts(image):
    """T5Gemma2: pooled and normed but not projected -> vision width (here 96) where the text takes 64."""
    adapter = cached_preset("tiny-t5gemma2", native=True)
    inputs = adapter.build_inputs([image(384, 128)], ["<image> a person"])
    tokens = adapter.encode_images(inputs)
    projector = adapter.projector
    patches = tokens.raw.view(1, 27, 9, -1).permute(0, 3, 1, 2)
    unprojected = projector.mm_soft_emb_norm(projector.avg_pool(patches).flatten(2).transpose(1, 2))[0]
    broken = replace(tokens, embeds=unprojected.detach())
    assert broken.embeds.shape == (12, adapter.vision_width)  # 12 tokens vs 12 placeholders: counts agree
    with pytest.raises(ImageTokenMismatch, match=r"width 96.*takes 64: the projection step .* was skipped"):
        adapter.forward(inputs, broken)


def test_same_numel_wrong_shape_is_caught_where_the_library_lets_it_through(image):
    adapter = cached_preset("tiny-llava")
    inputs = adapter.build_inputs([image(112, 112)], ["<image> hi"])
    tokens = adapter.encode_images(inputs)
    folded = tokens.embeds.reshape(32, 128)  # same number of elements, wrong shape
    # transformers' own check compares element counts and scatters the folded tensor silently:
    embeds = adapter.text_embeddings(inputs.input_ids)
    mask = adapter.model.model.get_placeholder_mask(
        inputs.input_ids, inputs_embeds=embeds, image_features=folded
    )
    scattered = embeds.masked_scatter(mask, folded)  # no error from the library
    assert mask.sum() == 64 and scattered.shape == embeds.shape
    with pytest.raises(ImageTokenMismatch, match=r"width 128"):
        adapter.forward(inputs, replace(tokens, embeds=folded, counts=[32]))


@pytest.mark.parametrize("qwen", QWEN_FAMILIES)
def test_seed_001_qwen_ids_without_image_tokens(qwen, image):
    """Text tokenized alone, pixels processed alone: 'tokens: 0' becomes a message naming the cause."""
    adapter = cached_preset(qwen)
    good = adapter.build_inputs([image(56, 112)], ["<image> describe"])
    text_only = adapter.tokenizer(["<image> describe"], return_tensors="pt")
    broken = MultimodalInputs(
        input_ids=text_only["input_ids"],
        attention_mask=text_only["attention_mask"],
        image_token_mask=text_only["input_ids"] == adapter.image_token_id,
        image_spans=[[]],
        geometries=good.geometries,
        model_inputs=good.model_inputs,
    )
    tokens = adapter.encode_images(good)
    with pytest.raises(ImageTokenMismatch, match=r"no image tokens .*tokens: 0.*built without the images"):
        adapter.forward(broken, tokens)


def test_seed_004_llava_cls_kept(image):
    adapter = cached_preset("tiny-llava")
    inputs = adapter.build_inputs([image(112, 112)], ["<image> hi"])
    tokens = adapter.encode_images(inputs)
    with_cls = tokens.tower_hidden_states[-2][0]  # [65, C]: the CLS token was not dropped
    broken = replace(tokens, embeds=adapter.project(with_cls, tokens.geometries).detach(), counts=[65])
    with pytest.raises(
        ImageTokenMismatch,
        match=r"64 placeholders vs 65 features; one token too many: the CLS token was kept",
    ):
        adapter.forward(inputs, broken)


def test_seed_004_second_tower_pass_and_cls_do_not_match_but_the_layer_does(image):
    """What the seed saw: features taken with CLS, or reprojected from elsewhere, differ; VisionTokens match."""
    adapter = cached_preset("tiny-llava")
    inputs = adapter.build_inputs([image(112, 112)], ["<image> hi"])
    tokens = adapter.encode_images(inputs)
    inserted = adapter.model_inserted_embeds(inputs)
    assert torch.equal(adapter.project(tokens.raw, tokens.geometries), inserted)
    last_with_cls = adapter.vision_tower(inputs.model_inputs["pixel_values"]).last_hidden_state[0]
    assert last_with_cls.shape[0] == 65  # the seed's 577 vs 576
    assert not torch.allclose(
        adapter.project(last_with_cls[1:], tokens.geometries), inserted
    )  # wrong layer as well


def test_resolution_mismatch_names_both_sizes(image):
    adapter = cached_preset("tiny-t5gemma2", native=True)
    inputs = adapter.build_inputs([image(384, 128)], ["<image> a person"])
    other = adapter.encode_images(adapter.build_inputs([image(392, 112)], ["<image> a person"]))
    with pytest.raises(ImageTokenMismatch, match=r"12 placeholders vs 14 features.*392x112.*384x128"):
        adapter.forward(inputs, other)


def test_build_inputs_requires_one_marker_per_image(image):
    adapter = cached_preset("tiny-llava")
    with pytest.raises(ImageTokenMismatch, match=r"sample 1 has 0 image marker\(s\) but 1 image"):
        adapter.build_inputs([image(50, 50), image(50, 50)], ["<image> a", "no marker here"])


@pytest.mark.parametrize("qwen", QWEN_FAMILIES)
def test_qwen_positions_are_computed_on_the_full_sequence(qwen, image):
    """From inputs_embeds with a stale rope_deltas, Qwen silently differs; without mm_token_type_ids
    Qwen2.5-VL silently falls back to 1-D positions (Qwen2-VL and Qwen3-VL refuse, in transformers 5.23)."""
    adapter = build_preset(qwen)
    inputs = adapter.build_inputs([image(56, 112)], ["<image> describe the picture"])
    with torch.no_grad():
        reference = adapter.model_own_call(inputs).logits  # processor-built, with mm_token_type_ids
        ours = adapter.forward(inputs).logits

        def without_types():
            return adapter.model(
                input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, **inputs.model_inputs
            ).logits

        if qwen in ("tiny-qwen2-vl", "tiny-qwen3-vl"):
            with pytest.raises(ValueError, match="mm_token_type_ids"):
                without_types()
            no_types = None
        else:
            no_types = without_types()
        # An earlier call on another image leaves rope_deltas behind; inputs_embeds alone then reuses it.
        other = adapter.build_inputs([image(112, 56, seed=3)], ["a longer prompt first <image> then text"])
        adapter.model_own_call(other)
        embeds = adapter.insert(inputs, adapter.encode_images(inputs))
        stale = adapter.model(inputs_embeds=embeds, attention_mask=inputs.attention_mask).logits
        ours_after = adapter.forward(inputs).logits
    assert torch.equal(ours, reference)
    assert torch.equal(ours_after, reference)
    assert no_types is None or not torch.allclose(no_types, reference, atol=1e-4)
    assert not torch.allclose(stale, reference, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"num_additional_image_tokens": 0},
            r"expands each image to 63 placeholders .* produces 64 features",
        ),
        (
            {"vision_feature_select_strategy": "full"},
            r"processor vision_feature_select_strategy='full' but the model config says 'default'",
        ),
    ],
)
def test_llava_processor_disagreeing_with_config_is_refused(kwargs, message):
    from transformers import LlavaProcessor

    adapter = cached_preset("tiny-llava")
    settings = {
        "patch_size": 14,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
    }
    settings.update(kwargs)
    processor = LlavaProcessor(
        image_processor=adapter.processor.image_processor, tokenizer=adapter.tokenizer, **settings
    )
    with pytest.raises(ImageTokenMismatch, match=message):
        type(adapter)(adapter.model, processor)


def test_siglip_tower_with_default_strategy_is_refused():
    with pytest.raises(ImageTokenMismatch, match="has no CLS: a real patch would be dropped"):
        build_preset("tiny-llava", vision="siglip", vision_feature_select_strategy="default")


def test_gemma_mm_tokens_per_image_that_does_not_divide_the_patch_grid():
    with pytest.raises(
        ImageTokenMismatch, match=r"mm_tokens_per_image=9 \(3x3\) does not divide .* 16x16 patch grid"
    ):
        build_preset("tiny-gemma3", mm_tokens_per_image=9)


def test_attention_maps_on_the_token_grid_switch_to_eager_once(image, caplog, monkeypatch):
    from visionloom.backbones import base

    monkeypatch.setattr(base, "_said", set())  # notices are said once per process: start afresh
    adapter = build_preset("tiny-llava-next")
    inputs = adapter.build_inputs([image(40, 90), image(100, 50, seed=1)], ["<image> a", "b <image>"])
    assert adapter.attention_implementation() == "sdpa"
    with caplog.at_level(logging.WARNING, logger="visionloom"), torch.no_grad():
        out = adapter.forward(inputs, output_attentions=True)
        adapter.forward(inputs, output_attentions=True)
    assert adapter.attention_implementation() == "eager"
    assert sum("now runs 'eager'" in r.message for r in caplog.records) == 1
    seq_len = inputs.input_ids.shape[1]
    for index, ((sample, positions), geometry) in enumerate(
        zip(inputs.placeholders(), inputs.geometries, strict=True)
    ):
        h, w = geometry.token_grid
        maps = out.image_attentions[index]
        assert maps.shape == (2, 4, seq_len, h, w)
        # Cell (r, c) is the attention to the sequence position of that grid cell, newlines skipped.
        r, c = h - 1, w - 1
        position = positions[geometry.offsets()[r * w + c]]
        assert torch.equal(maps[:, :, :, r, c], torch.stack(out.attentions)[:, sample, :, :, position])


def test_attention_weights_that_are_missing_or_not_tensors_are_refused():
    with pytest.raises(ImageTokenMismatch, match="no attention weights"):
        check_attention_weights(None, batch=1, seq_len=4)
    with pytest.raises(ImageTokenMismatch, match=r"layer 0 returned no attention weights \(None\)"):
        check_attention_weights((None,), batch=1, seq_len=4)
    with pytest.raises(ImageTokenMismatch, match="returned a tuple where attention weights were expected"):
        check_attention_weights(((torch.zeros(1, 4), None),), batch=1, seq_len=4)
    with pytest.raises(ImageTokenMismatch, match=r"shape \(1, 2, 4\)"):
        check_attention_weights((torch.zeros(1, 2, 4),), batch=1, seq_len=4)
