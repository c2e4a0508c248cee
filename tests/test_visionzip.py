"""VisionZip through the layer: keep-all bit for bit for every family and padding side; at a budget,
dominant tokens by tower attention and contextual tokens that are their groups' means."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import FAMILIES, cached_preset
from tests.test_pruning import SIDES, _encoded_batch, _out
from visionloom.pruning.apply import forward_pruned
from visionloom.pruning.pruners import TowerAttention, VisionZip, candidates


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_visionzip_at_ratio_one_is_the_unpruned_model_bit_for_bit(name, side, image):
    adapter = cached_preset(name)
    inputs, flags, tokens = _encoded_batch(adapter, image, side)
    with torch.no_grad():
        reference = _out(adapter.forward(inputs, tokens, **flags))
        decision = VisionZip().decide(adapter, inputs, tokens, 1.0)
        assert decision.embeds is None
        assert torch.equal(_out(forward_pruned(adapter, inputs, tokens, decision, **flags)), reference)


@pytest.mark.parametrize("name", FAMILIES)
def test_visionzip_keeps_dominant_tokens_and_merges_the_rest_into_contextual_ones(name, image):
    adapter = cached_preset(name)
    inputs, flags, tokens = _encoded_batch(adapter, image)
    pruner = VisionZip(dominant_share=0.5)
    with torch.no_grad():
        decision = pruner.decide(adapter, inputs, tokens, 0.25)
        output = _out(forward_pruned(adapter, inputs, tokens, decision, **flags))
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
        owner = (normalise(embeds[others], dim=-1) @ normalise(embeds[targets], dim=-1).T).argmax(-1)
        for slot, target in enumerate(targets):
            group = torch.cat([embeds[target : target + 1], embeds[others][owner == slot]])
            torch.testing.assert_close(merged[target], group.mean(0))


def test_prune_eval_runs_visionzip_by_name(scenes_root, scene_vlm, tmp_path):
    from visionloom.pruning.build import PruneConfig
    from visionloom.pruning.evaluate import evaluate_pruning

    directory, _ = scene_vlm
    config = PruneConfig(vlm=str(directory), max_questions=6, batch_size=6, keep_ratios=[1.0, 0.25])
    config.pruners = ["visionzip"]
    results = evaluate_pruning(config, scenes_root, tmp_path, progress=False)["results"]
    assert results["visionzip"]["0.25"]["image_tokens_kept"] == 16  # of the tiny LLaVA's 64
    assert 0.0 <= results["visionzip"]["0.25"]["accuracy"] <= 100.0
