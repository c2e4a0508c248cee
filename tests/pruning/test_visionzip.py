"""VisionZip through the layer: at a budget, dominant tokens by tower attention and contextual tokens
that are their groups' means (keep-all at ratio 1 is in test_pruning's keep-all test)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from tests.helpers import FAMILIES, QWEN_FAMILIES, cached_preset, encoded_batch, output_tensor
from visionloom.pruning.prefill import forward_pruned
from visionloom.pruning.pruners import TowerAttention, VisionZip, candidates


@pytest.mark.parametrize("name", FAMILIES)
def test_visionzip_keeps_dominant_tokens_and_merges_the_rest_into_contextual_ones(name, image):
    adapter = cached_preset(name)
    inputs, flags, tokens = encoded_batch(adapter, image)
    pruner = VisionZip(dominant_share=0.5)
    with torch.no_grad():
        decision = pruner.decide(adapter, inputs, tokens, 0.25)
        output = output_tensor(forward_pruned(adapter, inputs, tokens, decision, **flags))
    assert output.isfinite().all()
    scores = TowerAttention().scores(adapter, tokens)
    assert decision.embeds is not None  # contextual tokens were merged
    merged_images = torch.split(decision.embeds, list(tokens.counts))
    for index, (keep, embeds) in enumerate(zip(decision.keep, tokens.per_image(), strict=True)):
        pool = candidates(adapter, tokens, index)
        layout = adapter.structural_offsets(tokens.geometries[index])
        budget = math.ceil(0.25 * len(pool))
        assert len(keep) - len(layout) == budget and set(layout) <= set(keep.tolist())
        dominant_count = max(1, round(0.5 * budget))
        ranked = pool[scores[index][pool].argsort(descending=True, stable=True)]
        dominant = set(ranked[:dominant_count].tolist())
        assert dominant <= set(keep.tolist())  # the most attended tokens are kept as they are
        merged = merged_images[index]
        targets = [i for i in keep.tolist() if i not in dominant and i not in layout]
        for i in dominant | set(layout):
            assert torch.equal(merged[i], embeds[i])
        # each contextual token is the mean of its group: the group means add up to every non-dominant token
        rest = [i for i in pool.tolist() if i not in dominant]
        assert targets and len(targets) == budget - dominant_count
        normalise = torch.nn.functional.normalize
        others = [i for i in rest if i not in targets]
        keys = adapter.tower_keys(tokens)[index]  # groups form by the tower's key similarity
        owner = (normalise(keys[others], dim=-1) @ normalise(keys[targets], dim=-1).T).argmax(-1)
        for slot, target in enumerate(targets):
            group = torch.cat([embeds[target : target + 1], embeds[others][owner == slot]])
            torch.testing.assert_close(merged[target], group.mean(0))


def test_prune_eval_runs_visionzip_by_name(scenes_root, scene_vlm, tmp_path):
    from visionloom.pruning.config import PruneConfig
    from visionloom.pruning.evaluate import evaluate_pruning

    directory, _ = scene_vlm
    config = PruneConfig(vlm=str(directory), max_questions=6, batch_size=6, keep_ratios=[1.0, 0.25])
    config.pruners = ["visionzip"]
    results = evaluate_pruning(config, scenes_root, tmp_path, progress=False)["results"]
    assert results["visionzip"]["0.25"]["image_tokens_kept"] == 16  # of the tiny LLaVA's 64
    assert 0.0 <= results["visionzip"]["0.25"]["accuracy"] <= 100.0


@contextmanager
def captured_keys(adapter):
    """Every tower block's key projection output, from the model's own modules (a second pass; test-only)."""
    from visionloom.backbones.tower_attention import block_index

    tower = adapter.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        layer.self_attn.k_proj.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(i, out))
        for i, layer in enumerate(layers)
    ]
    try:
        yield seen, lambda block: block_index(block, len(layers))
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize(
    "name", ["tiny-llava", "tiny-deepseek-vl", "tiny-paligemma", "tiny-gemma3", "tiny-llava-next"]
)
def test_tower_keys_are_the_towers_own_key_projections_mapped_onto_the_tokens(name, image):
    adapter = cached_preset(name)
    inputs, _, tokens = encoded_batch(adapter, image)
    with torch.no_grad(), captured_keys(adapter) as (seen, index):
        keys = adapter.tower_keys(tokens)
        adapter.vision_tower(inputs.model_inputs["pixel_values"].flatten(0, -4))  # the library's pass
    assert [k.shape[0] for k in keys] == list(tokens.counts)
    if name == "tiny-llava":
        block = adapter.score_block(tokens, None)
        reference = seen[index(block)][:, 1:]  # [images, P', C], the class token dropped
        assert all(torch.allclose(k, r, atol=1e-6) for k, r in zip(keys, reference, strict=True))
    elif name in ("tiny-deepseek-vl", "tiny-paligemma"):
        reference = seen[index(-1)]
        assert all(torch.allclose(k, r, atol=1e-6) for k, r in zip(keys, reference, strict=True))
    elif name == "tiny-gemma3":
        rows, cols = tokens.geometries[0].patch_grid
        patch = seen[index(-1)].view(-1, rows, cols, keys[0].shape[-1])  # [N, 16, 16, C]
        kernel = rows // int(len(keys[0]) ** 0.5)
        for image_keys, patches in zip(keys, patch, strict=True):
            window = (
                patches[:kernel, :kernel].reshape(-1, patches.shape[-1]).mean(0)
            )  # the first token's window
            torch.testing.assert_close(image_keys[0], window, rtol=0, atol=1e-5)
    else:  # LLaVA-NeXT: newlines are NaN rows, every other row is finite
        for image_index, image_keys in enumerate(keys):
            layout = set(adapter.structural_offsets(tokens.geometries[image_index]))
            nan_rows = set(image_keys.isnan().all(-1).nonzero().flatten().tolist())
            assert (
                nan_rows == layout
                and image_keys[[i for i in range(len(image_keys)) if i not in layout]].isfinite().all()
            )


@pytest.mark.parametrize("qwen", QWEN_FAMILIES)
def test_qwen_tower_keys_average_each_merge_unit(qwen, image):
    adapter = cached_preset(qwen)
    _, _, tokens = encoded_batch(adapter, image)
    from visionloom.backbones.qwen2_5_vl import qwen_block_qk

    with torch.no_grad():
        keys = torch.cat(adapter.tower_keys(tokens))
        tower, hidden, grid_thw, window_index, block = adapter.tower_block_inputs(tokens, None)
        _, patch_keys, _ = qwen_block_qk(tower, hidden, grid_thw, window_index, block)  # window order
    unit = tower.spatial_merge_size**2
    per_unit = patch_keys.flatten(1).view(-1, unit, keys.shape[-1])  # window order
    raster = torch.argsort(window_index)
    torch.testing.assert_close(keys, per_unit.mean(1)[raster], rtol=0, atol=0)
    assert keys.shape == (sum(tokens.counts), tower.blocks[block].attn.qkv.out_features // 3)
