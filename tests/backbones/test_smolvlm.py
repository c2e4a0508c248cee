"""What is particular to SmolVLM: tiles with <row_r_col_c> text markers between the runs of image
tokens, a global image after them, pixel shuffle, and the settings the processor does not check."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import cached_preset, doctor_error_after, drop_weights, eager_weights_of, edit_json
from visionloom.backbones import load
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.smolvlm import SmolVLMAdapter
from visionloom.pruning.apply import prune_sequence
from visionloom.pruning.decision import Decision

runner = CliRunner()


@pytest.mark.parametrize(
    "size", [(60, 150), (150, 60), (200, 64), (111, 113), (336, 337), (40, 700), (700, 40), (90, 200)]
)
def test_tiles_and_markers_are_the_processors(size, image):
    """Each run of 16 image tokens follows its tile's <row_r_col_c> marker, tiles in raster order, and
    the global image's run follows <global-img>; the geometry's tile grid is the processor's."""
    adapter = cached_preset("tiny-smolvlm")
    inputs = adapter.build_inputs([image(*size)], ["<image> what is here?"])
    rows, cols = adapter.tile_grid(*size)
    positions = inputs.image_positions[0]
    runs = positions.view(-1, 16)
    assert len(runs) == rows * cols + 1
    ids = inputs.input_ids[0]
    convert = adapter.tokenizer.convert_tokens_to_ids
    expected = [convert(f"<row_{r + 1}_col_{c + 1}>") for r in range(rows) for c in range(cols)]
    assert ids[runs[:, 0] - 1].tolist() == [*expected, convert("<global-img>")]
    start, end = inputs.image_spans[0][0]
    marker = adapter.image_token_id  # SmolVLM's marker is its image token
    first = int((ids[:start] == convert("<fake_token_around_image>")).nonzero()[0])
    text = torch.cat([ids[:first], torch.tensor([marker]), ids[end + 1 :]])
    spliced, _ = adapter.splice(text, inputs.geometries, marker_id=marker)
    assert torch.equal(spliced, ids)


def test_pruning_keeps_every_marker_and_attention_maps_skip_them(image):
    adapter = cached_preset("tiny-smolvlm")
    inputs = adapter.build_inputs([image(60, 150), image(200, 64, 1)], ["<image> a", "and <image> b"])
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        out = adapter.forward(inputs, tokens, output_attentions=True)
        keep = [torch.arange(0, count, 5) for count in tokens.counts]
        pruned = prune_sequence(adapter, inputs, tokens, Decision(keep=keep))
    for sample in range(2):
        kept = pruned.kept_positions[sample]
        text = inputs.attention_mask[sample].bool() & ~inputs.image_token_mask[sample]
        assert bool(torch.isin(text.nonzero().flatten(), kept).all())  # markers, newlines, prompt
        assert int(pruned.image_token_mask[sample].sum()) == len(keep[sample])
    for index, ((sample, positions), geometry) in enumerate(
        zip(inputs.placeholders(), inputs.geometries, strict=True)
    ):
        h, w = geometry.token_grid
        for r, c in [(h - 1, w - 1), (h // 2, 1)]:  # a cell of the last tile, one further up
            column = positions[geometry.offsets()[r * w + c]]
            maps = out.image_attentions[index][..., r, c]
            assert torch.equal(maps, torch.stack(out.attentions)[:, sample, ..., column])


def test_tower_scores_are_the_patches_attention_averaged_over_each_shuffled_block(image):
    adapter = cached_preset("tiny-smolvlm")
    inputs = adapter.build_inputs([image(200, 64)], ["<image> a"])
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        scores = adapter.tower_attention_scores(tokens)
        with eager_weights_of(adapter, adapter.vision_tower.encoder.layers[-1].self_attn) as captured:
            adapter.encode_images(inputs)
    received = captured[0].mean((1, 2))  # [tiles, 64]: mean over heads and queries
    expected = received.view(-1, 4, 2, 4, 2).mean((2, 4)).flatten()
    torch.testing.assert_close(scores[0], expected)


def test_a_processor_count_other_than_the_towers_is_refused():
    adapter = cached_preset("tiny-smolvlm")
    processor = SmolVLMAdapter.build_processor(
        image_processor=adapter.processor.image_processor, tokenizer=adapter.tokenizer, image_seq_len=169
    )
    with pytest.raises(
        ImageTokenMismatch, match="image_seq_len=169 placeholders per tile but the tower gives 16"
    ):
        SmolVLMAdapter(adapter.model, processor)


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda d: drop_weights(d, "connector"), "projector weights are missing"),
        (
            lambda d: edit_json(d / "processor_config.json", lambda c: c.update(image_seq_len=64)),
            "image_seq_len=64 placeholders per tile",
        ),
        (
            lambda d: edit_json(d / "processor_config.json", lambda c: c.pop("image_seq_len")),
            "no image_seq_len",
        ),
    ],
    ids=["connector weights missing", "processor tokens per tile", "tokens per tile left to the default"],
)
def test_doctor_names_what_is_wrong_with_a_smolvlm_checkpoint(corrupt, expected, tmp_path):
    assert expected in doctor_error_after("tiny-smolvlm", corrupt, tmp_path)


def test_a_saved_checkpoint_splits_as_before(tmp_path, image):
    cached_preset("tiny-smolvlm").save_pretrained(tmp_path)
    assert int(load(tmp_path).build_inputs([image(60, 150)], ["<image> a"]).image_token_mask.sum()) == 112
