"""Token counts and grids are derived from the config and agree with what processor and model produce."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import FAMILIES, QWEN_FAMILIES, cached_preset
from visionloom.backbones import ImageTokenMismatch


@pytest.mark.parametrize(
    "size, patch_grid, token_grid, dropped_pixels, dropped_patches",
    [
        ((384, 128), (27, 9), (6, 2), (6, 2), (3, 1)),  # person images at 384x128, pooled 4x4
        ((392, 112), (28, 8), (7, 2), (0, 0), (0, 0)),  # 392x112: nothing dropped
    ],
)
def test_t5gemma2_native_geometry_matches_seed_000(
    size, patch_grid, token_grid, dropped_pixels, dropped_patches
):
    adapter = cached_preset("tiny-t5gemma2", native=True)  # patch 14, pooling 4
    geometry = adapter.geometry(*size)
    assert geometry.patch_grid == patch_grid
    assert geometry.token_grid == token_grid
    assert adapter.tokens_per_image(*size) == token_grid[0] * token_grid[1]
    assert geometry.dropped_pixels == dropped_pixels
    assert geometry.dropped_patches == dropped_patches
    assert bool(geometry.drop_report()) == any(dropped_pixels + dropped_patches)


def test_native_size_too_small_lists_sizes_that_fit():
    adapter = cached_preset("tiny-gemma3", native=True)
    with pytest.raises(ImageTokenMismatch, match=r"40x300 does not fit.*56x56.*nearest heights \[56"):
        adapter.geometry(40, 300)


def test_exact_sizes_near_384x128_include_392x112():
    adapter = cached_preset("tiny-t5gemma2", native=True)
    assert (392, 112) in adapter.exact_sizes_near(384, 128)


@pytest.mark.parametrize("qwen", QWEN_FAMILIES)
def test_qwen_native_size_must_be_a_multiple_of_patch_times_merge(qwen):
    adapter = cached_preset(qwen, native=True)
    step = adapter.factor  # 28 (patch 14), 32 for Qwen3-VL (patch 16)
    with pytest.raises(ImageTokenMismatch, match=rf"multiples of {step}.*nearest heights \[\d+, \d+"):
        adapter.geometry(100, 56)
    assert adapter.tokens_per_image(4 * step, 2 * step) == 4 * 2


def test_fixed_size_towers_refuse_other_native_sizes():
    for name in ("tiny-llava", "tiny-deepseek-vl"):
        adapter = cached_preset(name, native=True)
        with pytest.raises(ImageTokenMismatch, match="sizes that work: 112x112"):
            adapter.geometry(100, 120)


@pytest.mark.parametrize("size", [(90, 60), (50, 120), (224, 224), (33, 400), (12, 12), (1400, 2100)])
@pytest.mark.parametrize("qwen", QWEN_FAMILIES)
def test_qwen_tokens_per_image_equals_processor_and_model(qwen, size, image):
    adapter = cached_preset(qwen)
    inputs = adapter.build_inputs([image(*size)], ["<image> hi"])
    geometry = adapter.geometry(*size)
    grid = inputs.model_inputs["image_grid_thw"][0].tolist()
    assert grid == [1, *geometry.patch_grid]
    assert int(inputs.image_token_mask.sum()) == geometry.num_tokens == adapter.tokens_per_image(*size)
    assert adapter.encode_images(inputs).counts == [geometry.num_tokens]


@pytest.mark.parametrize("size", [(40, 90), (100, 50), (60, 60), (20, 200)])
def test_llava_next_geometry_matches_processor_and_packed_features(size, image):
    adapter = cached_preset("tiny-llava-next")
    inputs = adapter.build_inputs([image(*size)], ["<image> hi"])
    tokens = adapter.encode_images(inputs)
    geometry = adapter.geometry(*size)
    rows, cols = geometry.token_grid
    assert tokens.counts == [geometry.num_tokens] == [int(inputs.image_token_mask.sum())]
    assert geometry.num_tokens == 16 + rows * (cols + 1)  # base view + one newline per row
    # The grid offsets skip the base view and the newline tokens: no grid cell holds the newline vector.
    newline = adapter.model.model.image_newline
    cells = tokens.embeds[geometry.offsets()]
    assert not any(torch.equal(cell, newline) for cell in cells)
    newline_rows = [16 + r * (cols + 1) + cols for r in range(rows)]
    assert all(torch.equal(tokens.embeds[i], newline) for i in newline_rows)


def test_llava_token_count_follows_cls_policy():
    assert cached_preset("tiny-llava").tokens_per_image(300, 200) == 64  # 8x8, CLS dropped
    from visionloom.backbones.tiny import build_preset

    full = build_preset("tiny-llava", vision_feature_select_strategy="full")
    geometry = full.geometry(112, 112)
    assert geometry.num_tokens == 65 and geometry.offsets()[0] == 1  # CLS kept at offset 0, grid after it


@pytest.mark.parametrize(
    "size",
    [(112, 112), (200, 80), (80, 200), (10, 14), (1500, 1100)],
    ids=["square", "tall", "wide", "tiny", "huge"],
)
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_derives_the_processors_own_placeholder_count(name, size, image):
    """tokens_per_image and the geometry, from the config alone, against what the processor writes."""
    adapter = cached_preset(name)
    geometry = adapter.geometry(*size)
    inputs = adapter.build_inputs([image(*size)], ["<image> hi"])
    assert int(inputs.image_token_mask.sum()) == geometry.num_tokens == adapter.tokens_per_image(*size)
    assert len(geometry.offsets()) == geometry.token_grid[0] * geometry.token_grid[1] <= geometry.num_tokens
