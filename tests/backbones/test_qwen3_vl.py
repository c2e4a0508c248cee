"""What is particular to Qwen3-VL: DeepStack features carried from the one tower pass into the first
language layers, at the image positions, and gathered with the kept tokens when pruning."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.helpers import cached_preset
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.pruning.apply import full_sequence_kwargs
from visionloom.pruning.decision import Decision
from visionloom.pruning.prefill import forward_pruned
from visionloom.pruning.pruners import RandomPruner


def _batch(adapter, image, side: str = "right"):
    step = adapter.factor
    adapter.tokenizer.padding_side = side
    try:
        return adapter.build_inputs(
            [image(2 * step, 4 * step, 1), [image(3 * step, 2 * step, 2), image(2 * step, 2 * step, 3)]],
            ["<image> what is here?", "first <image> then <image> which one is bigger?"],
        )
    finally:
        adapter.tokenizer.padding_side = "right"


def test_deepstack_features_come_from_the_same_tower_pass(image):
    adapter = cached_preset("tiny-qwen3-vl")
    inputs = _batch(adapter, image)
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        own = adapter.model.model.get_image_features(
            pixel_values=inputs.model_inputs["pixel_values"],
            image_grid_thw=inputs.model_inputs["image_grid_thw"],
            return_dict=True,
        )
    assert len(tokens.deepstack) == len(adapter.config.vision_config.deepstack_visual_indexes) == 2
    for carried, parts in zip(tokens.deepstack, own.deepstack_features, strict=True):
        assert torch.equal(carried, torch.cat(list(parts)))
        assert carried.shape == tokens.embeds.shape
    assert not torch.allclose(tokens.deepstack[0], tokens.deepstack[1])


@pytest.mark.parametrize("side", ["right", "left"])
def test_inputs_embeds_alone_silently_lose_deepstack_and_the_layer_does_not(side, image):
    """The model given inputs_embeds (and the right positions) adds no DeepStack features: its logits
    differ from its own pixel forward. The layer's forward equals the pixel forward bit for bit."""
    adapter = cached_preset("tiny-qwen3-vl")
    inputs = _batch(adapter, image, side)
    with torch.no_grad():
        reference = adapter.model_own_call(inputs).logits
        tokens = adapter.encode_images(inputs)
        ours = adapter.forward(inputs, tokens).logits
        embeds = adapter.insert(inputs, tokens)
        positions = adapter.position_ids(inputs)
        plain = adapter.model(
            inputs_embeds=embeds, attention_mask=inputs.attention_mask, position_ids=positions
        ).logits
    assert torch.equal(ours, reference)
    real = inputs.attention_mask.bool()
    assert (plain - reference)[real].abs().max() > 1e-3


def test_missing_deepstack_is_refused(image):
    adapter = cached_preset("tiny-qwen3-vl")
    inputs = _batch(adapter, image)
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        with pytest.raises(ImageTokenMismatch, match=r"carry 0 DeepStack feature sets but the model adds 2"):
            adapter.forward(inputs, replace(tokens, deepstack=()))
        with pytest.raises(ImageTokenMismatch, match=r"DeepStack features 1 are \(5, 64\)"):
            adapter.forward(inputs, replace(tokens, deepstack=(tokens.deepstack[0], tokens.deepstack[1][:5])))
        embeds = adapter.insert(inputs, tokens)
        with pytest.raises(ImageTokenMismatch, match="image tokens but no DeepStack features"):
            adapter.run_language_model(inputs, embeds, adapter.language_model_kwargs(inputs))


@pytest.mark.parametrize("side", ["right", "left"])
def test_pruning_gathers_deepstack_with_the_kept_tokens(side, image):
    """A layer-0 drop: the logits equal the text model run by hand on the kept tokens, with the
    DeepStack rows of exactly those tokens (taken from the decision's indices, image by image), and
    differ from the same run given the first rows instead."""
    adapter = cached_preset("tiny-qwen3-vl")
    inputs = _batch(adapter, image, side)
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        decision = RandomPruner(seed=3).decide(adapter, inputs, tokens, 0.5)
        pruned = forward_pruned(adapter, inputs, tokens, decision).logits

        # By hand: every kept position of the full sequence, its embeddings and positions, and the
        # DeepStack rows of the kept image tokens (image offset + kept index).
        full = adapter.insert(inputs, tokens)
        positions = full_sequence_kwargs(adapter, inputs, tokens)["position_ids"]  # [3, B, S]
        offsets = torch.tensor([0, *tokens.counts]).cumsum(0)
        rows, keep_positions = [], []
        for sample in range(inputs.batch_size):
            keep = inputs.attention_mask[sample].bool().clone()
            for image_index, (owner, (start, end)) in enumerate(inputs.image_owner()):
                if owner == sample:
                    keep[start:end] = False
                    keep[start + decision.keep[image_index]] = True
                    rows.append(offsets[image_index] + decision.keep[image_index])
            keep_positions.append(keep.nonzero().flatten())

        def by_hand(deepstack_rows: torch.Tensor) -> list[torch.Tensor]:
            logits = []
            cursor = 0
            for sample, kept in enumerate(keep_positions):
                visual = inputs.image_token_mask[sample, kept]
                count = int(visual.sum())
                sample_rows = deepstack_rows[cursor : cursor + count]
                cursor += count
                hidden = adapter.language_module(
                    inputs_embeds=full[sample, kept][None],
                    position_ids=positions[:, sample, kept][:, None],
                    visual_pos_masks=visual[None],
                    deepstack_visual_embeds=[features[sample_rows] for features in tokens.deepstack],
                ).last_hidden_state
                logits.append(adapter.model.lm_head(hidden)[0])
            return logits

        kept_rows = torch.cat(rows)
        expected = by_hand(kept_rows)
        wrong = by_hand(torch.arange(len(kept_rows)))
    for sample, kept in enumerate(keep_positions):
        # The pruned batch's real rows, in order (padding on the batch's side).
        columns = pruned[sample][: len(kept)] if side == "right" else pruned[sample][-len(kept) :]
        torch.testing.assert_close(columns, expected[sample], rtol=0, atol=1e-5)
    assert max((w - e).abs().max() for w, e in zip(wrong, expected, strict=True)) > 1e-3


def test_a_stretch_after_a_drop_takes_the_deepstack_features_of_its_own_layers(image):
    """FastV at K=0 drops before language layer 1, which still takes DeepStack features (the second
    set): keeping everything is the model bit for bit, and with half the tokens dropped the second
    stretch's output depends on the second set and not on the first beyond what layer 0 passed on."""
    adapter = cached_preset("tiny-qwen3-vl")
    inputs = _batch(adapter, image, "left")
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        everything = [torch.arange(count) for count in tokens.counts]
        reference = adapter.forward(inputs, tokens).logits
        kept_all = forward_pruned(adapter, inputs, tokens, Decision(keep=everything, from_layer=1)).logits
        half = Decision(keep=[keep[::2] for keep in everything], from_layer=1)
        pruned = forward_pruned(adapter, inputs, tokens, half).logits
        first, second = tokens.deepstack
        without_second = replace(tokens, deepstack=(first, torch.zeros_like(second)))
        pruned_without_second = forward_pruned(adapter, inputs, without_second, half).logits
    assert torch.equal(kept_all, reference)
    assert (pruned - pruned_without_second).abs().max() > 1e-3
