"""What is particular to InternVL: the processor's tiling default over the checkpoint's file, the
tile mosaic the token grid lives on, pixel shuffle, and the settings that must agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import cached_preset, doctor_error_after, drop_weights, eager_weights_of, edit_json
from visionloom.backbones import load
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.internvl import InternVLAdapter

runner = CliRunner()


def test_the_processor_tiles_whatever_the_image_processor_file_says(image):
    """The image processor's settings say crop_to_patches=False (as the released files do): counted
    from them, a 60x150 image would be one tile. InternVLProcessor tiles it by its own default;
    the layer's geometry follows the processor."""
    adapter = cached_preset("tiny-internvl")
    image_processor = adapter.processor.image_processor
    assert image_processor.crop_to_patches is False
    assert image_processor.get_number_of_image_patches(60, 150) == 1
    plain = adapter.processor(text=["<IMG_CONTEXT> hi"], images=[image(60, 150)], return_tensors="pt")
    written = int((plain["input_ids"] == adapter.image_token_id).sum())
    assert written == adapter.tokens_per_image(60, 150) == (2 + 1) * 16  # two tiles and the thumbnail
    assert plain["pixel_values"].shape[0] == 3


def test_the_token_grid_is_the_tile_mosaic_in_the_processors_tile_order(image):
    """A 224x224 image is cut into 2x2 tiles; each quadrant gets its own colour. The processor's tile
    t holds quadrant (t // 2, t % 2), and the geometry puts the mosaic cells of that quadrant on tile
    t's placeholders; the thumbnail's are outside the mosaic."""
    adapter = cached_preset("tiny-internvl")
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    pixels = np.zeros((224, 224, 3), dtype=np.uint8)
    for quadrant, colour in enumerate(colours):
        row, col = divmod(quadrant, 2)
        pixels[row * 112 : (row + 1) * 112, col * 112 : (col + 1) * 112] = colour
    inputs = adapter.build_inputs([Image.fromarray(pixels)], ["<image> which colours?"])
    geometry = inputs.geometries[0]
    assert geometry.token_grid == (8, 8) and geometry.num_tokens == 5 * 16
    tiles = inputs.model_inputs["pixel_values"]  # [5, 3, 112, 112], normalised
    means = tiles[:4].mean((2, 3))  # [4, 3]
    for tile in range(4):  # normalised: a full channel is above zero, an empty one below
        assert (means[tile] > 0).tolist() == [value > 0 for value in colours[tile]]
    offsets = geometry.offsets().view(8, 8)
    for tile in range(4):
        row, col = divmod(tile, 2)
        cells = offsets[row * 4 : (row + 1) * 4, col * 4 : (col + 1) * 4]
        assert sorted(cells.flatten().tolist()) == list(range(tile * 16, (tile + 1) * 16))
    assert set(offsets.flatten().tolist()).isdisjoint(range(64, 80))  # the thumbnail


def test_raw_rows_are_the_pixel_shuffled_2x2_patch_blocks(image):
    """Token (i, j) of a tile holds patches (2i + a, 2j + b) in its channels, blocks in (a, b) order:
    raw is the model's pixel shuffle of the same pass, and the tower scores average the same blocks."""
    adapter = cached_preset("tiny-internvl")
    inputs = adapter.build_inputs([image(60, 150)], ["<image> a"])
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
    patches = tokens.tower_hidden_states[-1]  # the last block's input; the features are its output
    features = adapter.vision_tower(inputs.model_inputs["pixel_values"]).last_hidden_state[
        :, 1:
    ]  # [3, 64, C]
    channels = features.shape[-1]
    raw = tokens.raw.view(3, 4, 4, 4, channels)  # [tiles, i, j, block, C]
    for i, j, a, b in [(0, 0, 0, 1), (1, 2, 1, 0), (3, 3, 1, 1), (2, 1, 0, 0)]:
        patch = (2 * i + a) * 8 + 2 * j + b
        assert torch.equal(raw[:, i, j, 2 * a + b], features[:, patch])
    assert patches.shape[1] == 65  # the class token first


def test_tower_scores_are_the_class_tokens_attention_averaged_over_each_block(image):
    adapter = cached_preset("tiny-internvl")
    inputs = adapter.build_inputs([image(60, 150)], ["<image> a"])
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        scores = adapter.tower_attention_scores(tokens)
        with eager_weights_of(adapter, adapter.vision_tower.encoder.layer[-1].attention) as captured:
            adapter.encode_images(inputs)
    received = captured[0][:, :, 0, 1:].mean(1)  # [tiles, 64]: the class token's row, mean over heads
    expected = received.view(3, 4, 2, 4, 2).mean((2, 4)).flatten()
    torch.testing.assert_close(scores[0], expected)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_seq_length": 64}, r"image_seq_length=64 placeholders per tile but the tower gives 16"),
        (
            {"size": {"height": 224, "width": 224}},
            r"image processor size=224 but the tower's image_size is 112",
        ),
    ],
)
def test_processor_settings_that_disagree_with_the_tower_are_refused(change, message):
    adapter = cached_preset("tiny-internvl")
    image_processor = adapter.processor.image_processor
    if "size" in change:
        image_processor = type(image_processor)(**{**image_processor.to_dict(), **change})
    processor = InternVLAdapter.build_processor(
        image_processor=image_processor,
        tokenizer=adapter.tokenizer,
        image_seq_length=change.get("image_seq_length", 16),
    )
    with pytest.raises(ImageTokenMismatch, match=message):
        InternVLAdapter(adapter.model, processor)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_follows_the_tokenizer_not_the_processors_left_default(side, image):
    adapter = cached_preset("tiny-internvl")
    before, adapter.tokenizer.padding_side = adapter.tokenizer.padding_side, side
    try:
        inputs = adapter.build_inputs(
            [image(112, 112), image(112, 112, 1)], ["<image> a", "<image> a longer one"]
        )
    finally:
        adapter.tokenizer.padding_side = before
    padded = inputs.attention_mask[0] == 0
    assert bool(padded.any()) and bool(padded[0] if side == "left" else padded[-1])


def test_keeping_the_class_token_is_refused():
    adapter = cached_preset("tiny-internvl")
    adapter.model.config.vision_feature_select_strategy = "full"
    try:
        with pytest.raises(ImageTokenMismatch, match="InternViT has a class token"):
            InternVLAdapter(adapter.model, adapter.processor)
    finally:
        adapter.model.config.vision_feature_select_strategy = "default"


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda d: drop_weights(d, "multi_modal_projector"), "projector weights are missing"),
        (
            lambda d: edit_json(d / "processor_config.json", lambda c: c.update(image_seq_length=256)),
            "image_seq_length=256 placeholders per tile",
        ),
        (
            lambda d: edit_json(d / "config.json", lambda c: c.update(vision_feature_select_strategy="full")),
            "InternViT has a class token",
        ),
    ],
    ids=["projector weights missing", "processor tokens per tile", "class token kept"],
)
def test_doctor_names_what_is_wrong_with_an_internvl_checkpoint(corrupt, expected, tmp_path):
    assert expected in doctor_error_after("tiny-internvl", corrupt, tmp_path)


def test_a_saved_checkpoint_tiles_as_before(tmp_path, image):
    cached_preset("tiny-internvl").save_pretrained(tmp_path)
    inputs = load(tmp_path).build_inputs([image(60, 150)], ["<image> a"])
    assert int(inputs.image_token_mask.sum()) == 48
