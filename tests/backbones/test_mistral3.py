"""What is particular to Mistral3: [IMG_BREAK]/[IMG_END] text tokens between the rows of image
tokens (insertion, attention maps and pruning go around them), the Pixtral patch merger's 2x2
blocks, and the processor's merge size that defaults to 1."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import (
    assert_matches_model,
    cached_preset,
    doctor_error_after,
    drop_weights,
    eager_weights_of,
    edit_json,
)
from visionloom.backbones._compat import pixtral_processor_class
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.mistral3 import Mistral3Adapter
from visionloom.pruning.apply import prune_sequence
from visionloom.pruning.decision import Decision

runner = CliRunner()


def _inputs(adapter, image):
    return adapter.build_inputs(
        [image(60, 150), image(200, 64, 1)], ["<image> what is here?", "and <image> a longer question"]
    )


def test_row_breaks_are_text_between_runs_of_image_tokens(image):
    adapter = cached_preset("tiny-mistral3")
    inputs = _inputs(adapter, image)
    brk = adapter.tokenizer.convert_tokens_to_ids("[IMG_BREAK]")
    end = adapter.tokenizer.convert_tokens_to_ids("[IMG_END]")
    for (sample, positions), geometry in zip(inputs.placeholders(), inputs.geometries, strict=True):
        rows, cols = geometry.token_grid
        grid = positions.view(rows, cols)
        ids = inputs.input_ids[sample]
        assert ids[grid[:-1, -1] + 1].tolist() == [brk] * (rows - 1)  # a break closes every row but the last
        assert int(ids[grid[-1, -1] + 1]) == end
        assert torch.equal(grid[1:, 0] - grid[:-1, 0], torch.full((rows - 1,), cols + 1))
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        embeds = adapter.insert(inputs, tokens)
        breaks = inputs.input_ids == brk
        assert torch.equal(embeds[breaks], adapter.text_embeddings(inputs.input_ids)[breaks])
        assert torch.equal(embeds[inputs.image_token_mask], tokens.embeds)


def test_splice_writes_the_processors_own_span(image):
    adapter = cached_preset("tiny-mistral3")
    inputs = adapter.build_inputs([image(60, 150)], ["<image> what is here?"])
    start, end = inputs.image_spans[0][0]
    marker = adapter.tokenizer.convert_tokens_to_ids("[IMG]")
    text_ids = torch.cat(
        [inputs.input_ids[0, :start], torch.tensor([marker]), inputs.input_ids[0, end + 1 :]]
    )
    spliced, _ = adapter.splice(text_ids, inputs.geometries, marker_id=marker)
    assert torch.equal(spliced, inputs.input_ids[0])


def test_attention_maps_and_pruning_go_around_the_breaks(image):
    adapter = cached_preset("tiny-mistral3")
    inputs = _inputs(adapter, image)
    brk = adapter.tokenizer.convert_tokens_to_ids("[IMG_BREAK]")
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        out = adapter.forward(inputs, tokens, output_attentions=True)
        keep = [torch.tensor([0, count - 1]) for count in tokens.counts]
        pruned = prune_sequence(adapter, inputs, tokens, Decision(keep=keep))
    for index, ((sample, positions), geometry) in enumerate(
        zip(inputs.placeholders(), inputs.geometries, strict=True)
    ):
        rows, cols = geometry.token_grid
        stacked = torch.stack(out.attentions)[:, sample]  # [L, H, S, S]
        assert torch.equal(
            out.image_attentions[index][..., rows - 1, 0], stacked[..., positions[(rows - 1) * cols]]
        )
    for sample in range(2):  # every break stays; two image tokens per image stay
        kept = pruned.kept_positions[sample]
        assert int((inputs.input_ids[sample, kept] == brk).sum()) == int(
            (inputs.input_ids[sample] == brk).sum()
        )
        assert int(pruned.image_token_mask[sample].sum()) == 2


def test_placeholders_without_the_row_breaks_are_refused(image):
    adapter = cached_preset("tiny-mistral3")
    geometry = adapter.geometry(60, 150)  # 3 rows of 6
    contiguous = torch.zeros(1, 30, dtype=torch.bool)
    contiguous[0, 2:20] = True
    with pytest.raises(
        ImageTokenMismatch, match=r"come in runs of \[18\] but mistral3 writes runs of \[6, 6, 6\]"
    ):
        adapter._placeholder_positions(contiguous, [[18]], [geometry])


def test_tower_scores_are_the_patches_attention_averaged_over_each_merged_block(image):
    adapter = cached_preset("tiny-mistral3")
    inputs = _inputs(adapter, image)
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        scores = adapter.tower_attention_scores(tokens)
        with eager_weights_of(adapter, adapter.vision_tower.transformer.layers[-1].attention) as captured:
            adapter.encode_images(inputs)
    weights = captured[0][0]  # [heads, patches, patches], both images packed, block-diagonal
    start = 0
    for image_scores, geometry in zip(scores, tokens.geometries, strict=True):
        rows, cols = geometry.patch_grid
        block = weights[:, start : start + rows * cols, start : start + rows * cols]
        received = block.mean((0, 1))  # [patches]
        expected = received.view(rows // 2, 2, cols // 2, 2).mean((1, 3)).flatten()
        torch.testing.assert_close(image_scores, expected)
        start += rows * cols


def test_a_processor_with_its_default_merge_size_is_refused():
    adapter = cached_preset("tiny-mistral3")
    processor = pixtral_processor_class()(
        image_processor=adapter.processor.image_processor, tokenizer=adapter.tokenizer, patch_size=14
    )
    with pytest.raises(ImageTokenMismatch, match="processor spatial_merge_size=1 but the model's is 2"):
        Mistral3Adapter(adapter.model, processor)


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda d: drop_weights(d, "patch_merger"), "projector weights are missing"),
        (
            lambda d: edit_json(d / "processor_config.json", lambda c: c.pop("spatial_merge_size")),
            "processor spatial_merge_size=1",
        ),
        (
            lambda d: edit_json(
                d / "config.json", lambda c: c.update(image_token_index=c["image_token_index"] + 1)
            ),
            "the processor writes '[IMG]'",
        ),
    ],
    ids=["patch merger weights missing", "merge size left to the processor's default", "image token id"],
)
def test_doctor_names_what_is_wrong_with_a_mistral3_checkpoint(corrupt, expected, tmp_path):
    assert expected in doctor_error_after("tiny-mistral3", corrupt, tmp_path)


def test_native_resolution_takes_multiples_of_patch_times_merge_and_names_the_nearest(image):
    adapter = cached_preset("tiny-mistral3", native=True)
    with pytest.raises(ImageTokenMismatch, match=r"multiples of 28 .*nearest heights \[112, 84, 140, 56\]"):
        adapter.geometry(100, 57)
    with pytest.raises(ImageTokenMismatch, match="longer side at most 168"):
        adapter.geometry(196, 28)
    inputs = adapter.build_inputs([image(112, 56), image(56, 84, 1)], ["<image> a", "<image> b"])
    assert [g.token_grid for g in inputs.geometries] == [(4, 2), (2, 3)]
    assert inputs.image_token_mask.sum(1).tolist() == [8, 6]
    assert_matches_model(adapter, inputs)  # the pixels kept at their size, as the processor was told
