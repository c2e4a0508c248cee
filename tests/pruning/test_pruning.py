"""Pruning: the invariant for every family, consistent application, and the pruners."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from tests.helpers import (
    FAMILIES,
    QWEN_FAMILIES,
    SIDES,
    cached_preset,
    eager_weights_of,
    encoded_batch,
    output_tensor,
    padded_on,
    two_sample_batch,
)
from visionloom.backbones.tiny import build_preset
from visionloom.pruning.apply import prune_sequence
from visionloom.pruning.decision import Decision
from visionloom.pruning.prefill import forward_pruned
from visionloom.pruning.pruners import (
    KeepAll,
    LearnedScorer,
    RandomPruner,
    TextAttention,
    TowerAttention,
    VisionZip,
)
from visionloom.vlm.answers import AnswerCollate


class OnesSoft:
    """The soft-weight reference of the invariant: every token weighted 1 (tests only)."""

    name = "ones-soft"

    def decide(self, adapter, inputs, tokens, keep_ratio: float = 1.0, *, query_positions=None) -> Decision:
        return Decision(weights=[torch.ones(count) for count in tokens.counts])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_keep_all_and_all_ones_are_bit_identical_to_the_unpruned_model(name, side, image):
    """Keep-all, all-ones soft weights and VisionZip at ratio 1 (every token dominant, nothing merged)."""
    adapter = cached_preset(name)
    inputs, flags, tokens = encoded_batch(adapter, image, side)
    with torch.no_grad():
        reference = output_tensor(adapter.forward(inputs, tokens, **flags))
        for pruner in (KeepAll(), OnesSoft(), VisionZip()):
            decision = pruner.decide(adapter, inputs, tokens, 1.0)
            assert decision.embeds is None, pruner.name
            assert torch.equal(
                output_tensor(forward_pruned(adapter, inputs, tokens, decision, **flags)), reference
            ), pruner.name
    assert inputs.attention_mask[0].sum() < inputs.attention_mask.shape[1]  # the batch really is padded


def test_seed_004_cls_features_or_a_second_pass_do_not_reproduce_the_model_but_vision_tokens_do(image):
    """What cost the seed 7 points: keep-all built from the wrong features is not keep-all."""
    adapter = cached_preset("tiny-llava")
    inputs, _, tokens = encoded_batch(adapter, image)
    with torch.no_grad():
        reference = adapter.forward(inputs, tokens).logits
        assert torch.equal(
            forward_pruned(adapter, inputs, tokens, KeepAll().decide(adapter, inputs, tokens)).logits,
            reference,
        )
        # A second tower pass through the last layer (as the seed's pruner did): other features.
        last = adapter.vision_tower(inputs.model_inputs["pixel_values"]).last_hidden_state  # [2, 65, C]
        second_pass = replace(tokens, embeds=adapter.project(last[:, 1:], tokens.geometries).flatten(0, 1))
        assert not torch.allclose(forward_pruned(adapter, inputs, second_pass, Decision()).logits, reference)
        # Features with the CLS token kept: one too many, which the layer refuses.
        with_cls = tokens.tower_hidden_states[-2]  # [2, 65, C]
        from visionloom.backbones.checks import ImageTokenMismatch

        broken = replace(
            tokens, embeds=adapter.project(with_cls, tokens.geometries).flatten(0, 1), counts=[65, 65]
        )
        with pytest.raises(ImageTokenMismatch, match="CLS token was kept"):
            forward_pruned(adapter, inputs, broken, Decision())


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl", "tiny-llava-next", "tiny-gemma3"])
def test_pruned_sequences_shrink_together_and_keep_full_sequence_positions(name, image):
    adapter = cached_preset(name)
    inputs, _, tokens = encoded_batch(adapter, image)
    keep = [RandomPruner(seed=1).decide(adapter, inputs, tokens, 0.5).keep[0], torch.arange(tokens.counts[1])]
    decision = Decision(keep=keep)  # the two samples keep different counts
    pruned = prune_sequence(adapter, inputs, tokens, decision)
    dropped = tokens.counts[0] - len(keep[0])
    real = inputs.attention_mask.sum(1)
    assert pruned.attention_mask.sum(1).tolist() == [int(real[0]) - dropped, int(real[1])]
    assert pruned.image_token_mask.sum(1).tolist() == [len(keep[0]), tokens.counts[1]]
    length = pruned.inputs_embeds.shape[1]
    for key, value in pruned.model_kwargs.items():
        if isinstance(value, torch.Tensor):  # per token; Qwen3-VL's DeepStack features go as they are
            assert value.shape[-1] == length, key
    # Position ids are the full sequence's, gathered: kept tokens keep the positions they had.
    from visionloom.pruning.apply import full_sequence_kwargs

    full = full_sequence_kwargs(adapter, inputs, tokens)["position_ids"]
    for row in range(2):
        kept = pruned.kept_positions[row]
        assert torch.equal(pruned.model_kwargs["position_ids"][..., row, : len(kept)], full[..., row, kept])
    # The kept image embeddings are the layer's, in order.
    positions = inputs.image_positions[0]  # where image 0's placeholders sit
    image_rows = pruned.inputs_embeds[0][pruned.image_token_mask[0]]
    assert torch.equal(image_rows, adapter.insert(inputs, tokens)[0, positions[keep[0]]])
    with torch.no_grad():
        logits = forward_pruned(adapter, inputs, tokens, decision).logits
    assert logits.shape[:2] == pruned.attention_mask.shape


@pytest.mark.parametrize("qwen", QWEN_FAMILIES)
def test_qwen_positions_are_gathered_not_recomputed(qwen, image):
    """Recomputing 3-D rotary positions on the shortened ids would renumber everything after the image."""
    adapter = cached_preset(qwen)
    inputs, _, tokens = encoded_batch(adapter, image)
    decision = RandomPruner().decide(adapter, inputs, tokens, 0.25)
    pruned = prune_sequence(adapter, inputs, tokens, decision)
    positions = pruned.model_kwargs["position_ids"]  # [3, B, S']
    assert positions.shape[0] == 3
    row, kept = 0, pruned.kept_positions[0]
    after_image = (
        pruned.image_token_mask[0].nonzero().max() + 2
    )  # first text token after the image's end marker
    full = adapter.position_ids(inputs)
    assert torch.equal(positions[:, row, after_image], full[:, row, kept[after_image]])
    # Each kept image token keeps its grid row and column as its 2nd and 3rd rotary positions.
    _, width = inputs.geometries[0].token_grid
    image_rows = pruned.image_token_mask[0].nonzero().flatten()
    grid_rows = torch.div(decision.keep[0], width, rounding_mode="floor")
    base = positions[1, row, image_rows[0]] - grid_rows[0]
    assert torch.equal(positions[1, row, image_rows], base + grid_rows)
    assert torch.equal(
        positions[2, row, image_rows] - positions[2, row, image_rows[0]],
        (decision.keep[0] % width) - decision.keep[0][0] % width,
    )


def test_llava_next_newlines_are_never_dropped(image):
    adapter = cached_preset("tiny-llava-next")
    inputs, _, tokens = encoded_batch(adapter, image)
    newlines = adapter.structural_offsets(tokens.geometries[0])
    assert len(newlines) == tokens.geometries[0].token_grid[0]
    decision = RandomPruner().decide(adapter, inputs, tokens, 0.11)
    assert set(newlines) <= set(decision.keep[0].tolist())
    bad = Decision(keep=[torch.tensor([0, 1]), torch.arange(tokens.counts[1])])
    with pytest.raises(ValueError, match="layout tokens .* must be kept"):
        prune_sequence(adapter, inputs, tokens, bad)


def test_keep_ratio_counts_and_bad_decisions(image):
    adapter = cached_preset("tiny-llava")
    inputs, _, tokens = encoded_batch(adapter, image)
    for ratio, expected in ((1.0, 64), (0.5, 32), (0.25, 16), (0.11, 8)):
        assert [len(k) for k in RandomPruner().decide(adapter, inputs, tokens, ratio).keep] == [expected] * 2
    with pytest.raises(ValueError, match="sorted and distinct"):
        prune_sequence(adapter, inputs, tokens, Decision(keep=[torch.tensor([3, 1]), torch.arange(64)]))
    with pytest.raises(ValueError, match="outside 0..63"):
        prune_sequence(adapter, inputs, tokens, Decision(keep=[torch.tensor([64]), torch.arange(64)]))


def _encoder_attention(adapter, block):
    return getattr(adapter.vision_tower, "vision_model", adapter.vision_tower).encoder.layers[block].self_attn


def _scores_and_eager_weights(adapter, inputs, block, reference_block):
    """The layer's scores at `block` from one pass; the model's eager weights at `reference_block`
    (the same block, named explicitly) from a second."""
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        scores = adapter.tower_attention_scores(tokens, block)
        with eager_weights_of(adapter, _encoder_attention(adapter, reference_block)) as captured:
            adapter.encode_images(inputs)
    (weights,) = captured  # [images, heads, P(+1), P(+1)]
    return tokens, torch.stack(scores), weights


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-deepseek-vl", "tiny-paligemma", "llava-with-siglip"])
def test_tower_scores_are_the_towers_own_attention_from_the_same_pass(name, image):
    """CLIP: the class token's row; SigLIP (no class token, every patch a token): the mean over
    queries. Both equal the model's eager weights."""
    from visionloom.backbones.llava import tiny_llava

    adapter = tiny_llava(vision="siglip") if name == "llava-with-siglip" else cached_preset(name)
    inputs, _ = two_sample_batch(adapter, image)
    tokens, scores, weights = _scores_and_eager_weights(adapter, inputs, block=-2, reference_block=-2)
    expected = weights[:, :, 0, 1:].mean(1) if name == "tiny-llava" else weights.mean((1, 2))
    torch.testing.assert_close(scores, expected)
    assert list(scores.shape) == [2, 64] and tokens.counts == [64, 64]
    decision = TowerAttention(block=-2).decide(adapter, inputs, tokens, 0.25)
    assert torch.equal(decision.keep[0], scores[0].topk(16).indices.sort().values)
    if name not in (
        "tiny-deepseek-vl",
        "tiny-paligemma",
    ):  # LLaVA's default block is the feature layer's (-2)
        assert torch.equal(torch.stack(adapter.tower_attention_scores(tokens)), scores)
    with pytest.raises(ValueError, match="tower block 9 does not exist: the tower has 3 blocks"):
        adapter.tower_attention_scores(tokens, block=9)


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-t5gemma2"])
def test_gemma_tower_scores_are_pooled_like_the_projector_pools_patches(name, image):
    adapter = cached_preset(name)
    inputs, _ = two_sample_batch(adapter, image)
    tokens, scores, weights = _scores_and_eager_weights(adapter, inputs, block=None, reference_block=-1)
    per_patch = weights.mean((1, 2))  # [images, 256]: mean received attention, 16x16 patches
    rows, _ = tokens.geometries[0].patch_grid
    side, kernel = 4, rows // 4  # 16 tokens per image: 4x4 blocks of 4x4 patches
    expected = per_patch.view(-1, side, kernel, side, kernel).mean((2, 4)).flatten(1)
    torch.testing.assert_close(scores, expected)


@pytest.mark.parametrize("qwen", QWEN_FAMILIES)
def test_qwen_tower_scores_use_a_full_attention_block_and_land_on_merged_tokens(qwen, image):
    """Window order undone and 2x2 units averaged: checked against the eager weights of a second
    pass, re-ordered by matching the tower's window-order output rows to the layer's raster `raw`."""
    adapter = cached_preset(qwen)
    step = adapter.factor
    inputs = adapter.build_inputs(
        [image(4 * step, 6 * step, 1), image(6 * step, 4 * step, 2)], ["<image> a", "<image> b"]
    )
    tower = adapter.vision_tower
    full_block = adapter.full_attention_blocks()[-1]
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        scores = adapter.tower_attention_scores(tokens)
        with eager_weights_of(adapter, tower.blocks[full_block].attn) as captured:
            adapter.encode_images(inputs)
    assert len(captured) == 2  # one full-attention chunk per image
    received = torch.cat([weights.mean((0, 1, 2)) for weights in captured])  # [patches], window order
    window_order = tokens.tower_hidden_states[-1]  # the last block's output, window order
    to_raster = torch.cdist(tokens.raw, window_order).argmin(-1)  # raw row i = window row to_raster[i]
    assert torch.equal(window_order[to_raster], tokens.raw)
    expected = received[to_raster].view(-1, 4).mean(-1)
    torch.testing.assert_close(torch.cat(scores), expected)
    assert [len(s) for s in scores] == tokens.counts == [24, 24]
    if qwen == "tiny-qwen2.5-vl":  # Qwen2-VL has no windows: every block is a full-attention block
        with pytest.raises(ValueError, match="windowed attention"):
            adapter.tower_attention_scores(tokens, block=0)


def test_llava_next_tile_scores_follow_the_packed_layout_of_their_features(image):
    """Each placeholder's score is the score of the tile patch its embedding was projected from."""
    adapter = cached_preset("tiny-llava-next")
    inputs = adapter.build_inputs([image(84, 140, 1)], ["<image> a"])  # wide: tiles cropped by unpad
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        (scores,) = adapter.tower_attention_scores(tokens)
        per_tile = adapter.tile_attention_scores(tokens).flatten()  # [tiles * P]
        projected = adapter.projector(tokens.raw)  # [tiles * P, D], before packing
    newlines = list(adapter.structural_offsets(tokens.geometries[0]))
    assert scores[newlines].isnan().all()
    content = torch.ones(len(scores), dtype=torch.bool)
    content[newlines] = False
    source = torch.cdist(tokens.embeds[content], projected).argmin(-1)
    torch.testing.assert_close(tokens.embeds[content], projected[source])
    torch.testing.assert_close(scores[content], per_tile[source])
    assert tokens.geometries[0].token_grid[0] < 2 * 4  # the unpad really cropped rows


@pytest.mark.parametrize("name", FAMILIES)
def test_tower_attention_prunes_every_family(name, image):
    adapter = cached_preset(name)
    inputs, flags, tokens = encoded_batch(adapter, image)
    with torch.no_grad():
        pruner = TowerAttention(merge=True)
        decision = pruner.decide(adapter, inputs, tokens, 0.25)
        merged = replace(tokens, embeds=decision.embeds)  # the merged embeddings travel in the decision
        output = output_tensor(forward_pruned(adapter, inputs, tokens, decision, **flags))
    for image_index, keep in enumerate(decision.keep):
        layout = adapter.structural_offsets(tokens.geometries[image_index])
        assert set(layout) <= set(keep.tolist())
        content = tokens.counts[image_index] - len(layout)
        assert len(keep) - len(layout) == math.ceil(0.25 * content)
        # Layout tokens take no merges.
        assert torch.equal(
            merged.per_image()[image_index][list(layout)], tokens.per_image()[image_index][list(layout)]
        )
    assert output.isfinite().all()


def test_merging_moves_dropped_tokens_into_kept_ones(image):
    adapter = cached_preset("tiny-llava")
    inputs, _, tokens = encoded_batch(adapter, image)
    pruner = TowerAttention(merge=True)
    decision = pruner.decide(adapter, inputs, tokens, 0.25)
    merged = replace(tokens, embeds=decision.embeds)
    before, after = tokens.per_image()[0], merged.per_image()[0]
    kept = decision.keep[0]
    dropped = torch.ones(64, dtype=torch.bool)
    dropped[kept] = False
    normalise = torch.nn.functional.normalize
    owner = (normalise(before[dropped], dim=-1) @ normalise(before[kept], dim=-1).T).argmax(-1)
    for slot, index in enumerate(kept.tolist()):
        group = torch.cat([before[index : index + 1], before[dropped][owner == slot]])
        torch.testing.assert_close(after[index], group.mean(0))
    assert torch.equal(after[dropped], before[dropped])  # the dropped rows are not read again


@pytest.mark.parametrize("side", SIDES)
def test_text_attention_ranks_by_the_last_tokens_attention_at_layer_k(side, image):
    adapter = cached_preset("tiny-llava")
    inputs, _, tokens = encoded_batch(adapter, image, side)
    with torch.no_grad():
        full = adapter.forward(inputs, tokens, output_attentions=True)
        scores = TextAttention(layer=0).scores(adapter, inputs, tokens)
    for sample in range(2):  # the padded sample and the full one
        real = inputs.attention_mask[sample].nonzero().flatten()
        last = int(real[-1])
        positions = inputs.image_positions[sample]  # one image per sample
        torch.testing.assert_close(scores[sample], full.attentions[0][sample, :, last, positions].mean(0))
    assert len(adapter.language_module.layers) == 2  # restored after the shallow pass


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl", "tiny-gemma3"])
def test_pruned_rows_keep_the_padding_side_and_end_at_the_last_real_token(name, image):
    """Left padding: fill and padding go before each row's tokens, so logits[:, -1] stays each sample's last."""
    adapter = cached_preset(name)
    keep = None
    last_logits = {}
    for side in SIDES:
        inputs, _, tokens = encoded_batch(adapter, image, side)
        keep = keep or [torch.arange(0, tokens.counts[0], 2), torch.arange(0, tokens.counts[1], 4)]
        pruned = prune_sequence(adapter, inputs, tokens, Decision(keep=keep))
        for row in range(2):
            real = pruned.attention_mask[row].bool()
            assert torch.equal(pruned.layout[row][real], pruned.kept_positions[row])  # kept, in order
            if side == "left":  # all padding first, then the tokens, ending at the row's last real one
                assert bool(real[-1]) and int(pruned.layout[row, -1]) == int(
                    inputs.attention_mask[row].nonzero().max()
                )
                assert bool(real[int(real.int().argmax()) :].all())
            else:
                assert bool(real[0]) and bool(real[: int(real.sum())].all())
        with torch.no_grad():
            logits = forward_pruned(adapter, inputs, tokens, Decision(keep=keep)).logits
        last = [int(pruned.attention_mask[row].nonzero().max()) for row in range(2)]
        last_logits[side] = torch.stack([logits[row, last[row]] for row in range(2)])
    # The same samples pruned the same way agree across padding sides at each one's last real token.
    torch.testing.assert_close(last_logits["left"], last_logits["right"], atol=1e-4, rtol=1e-4)


@contextmanager
def sequence_lengths(adapter):
    """Record (layer, sequence length) for every language-model layer that runs."""
    seen = []

    def record(index):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen.append((index, hidden.shape[1]))

        return hook

    layers = adapter.language_module.layers
    hooks = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_text_attention_drops_tokens_after_layer_k_only_and_keeping_all_is_the_model(name, side, image):
    """FastV at K=0: layer 0 sees every token, layer 1 the kept ones; keeping all changes nothing."""
    adapter = build_preset(name)
    inputs, flags = two_sample_batch(adapter, image, side)
    full = inputs.input_ids.shape[1]
    pruner = TextAttention(layer=0)
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        everything = pruner.decide(adapter, inputs, tokens, 1.0)
        kept_all = output_tensor(forward_pruned(adapter, inputs, tokens, everything, **flags))
        reference = output_tensor(
            adapter.forward(inputs, tokens, **flags)
        )  # eager now, as in the shallow pass
        assert torch.equal(kept_all, reference)

        decision = pruner.decide(adapter, inputs, tokens, 0.25)
        assert decision.from_layer == 1
        with sequence_lengths(adapter) as seen:
            pruned = output_tensor(forward_pruned(adapter, inputs, tokens, decision, **flags))
        short = seen[0][1]
        assert seen == [(1, short)] and short < full  # only layer 1 ran here, on the shorter sequence
        with sequence_lengths(adapter) as seen:  # no hidden state handed over: a shallow pass of its own
            again = output_tensor(
                forward_pruned(adapter, inputs, tokens, replace(decision, hidden_entering=None), **flags)
            )
        assert seen == [(0, full), (1, short)]
    assert torch.equal(again, pruned)
    kept = decision.kept_counts(tokens)
    longest = max(
        int(inputs.attention_mask[row].sum()) - tokens.counts[row] + kept[row] for row in range(len(kept))
    )
    assert short == longest
    assert len(adapter.language_module.layers) == 2


def test_later_layers_keep_their_own_attention_type(image):
    """Gemma3 picks each layer's mask by loop position: a layer run alone must still get its own."""
    text = {"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 4}
    adapter = build_preset("tiny-gemma3", text_overrides=text)
    config = adapter.language_module.config
    inputs, _ = two_sample_batch(adapter, image)
    pruner = TextAttention(layer=0)
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        kept_all = forward_pruned(adapter, inputs, tokens, pruner.decide(adapter, inputs, tokens, 1.0)).logits
        reference = adapter.forward(inputs, tokens).logits
        config.sliding_window = 1024
        without_window = adapter.forward(inputs, tokens).logits
    assert torch.equal(kept_all, reference)
    assert not torch.allclose(reference, without_window)  # the window really changes layer 1
    assert config.layer_types == ["full_attention", "sliding_attention"]  # restored


def test_soft_weights_cannot_start_at_a_later_layer_and_fastv_needs_a_layer_after_k(image):
    adapter = cached_preset("tiny-llava")
    inputs, _, tokens = encoded_batch(adapter, image)
    with pytest.raises(ValueError, match="must be 0..0"):
        TextAttention(layer=1).decide(adapter, inputs, tokens, 0.5)  # 2 layers: nothing after layer 1
    with pytest.raises(ValueError, match="later layer"):
        forward_pruned(adapter, inputs, tokens, Decision(weights=[torch.ones(64)] * 2, from_layer=1))


def test_learned_scorer_is_soft_in_training_and_hard_at_inference(image):
    adapter = cached_preset("tiny-llava")
    inputs, _, tokens = encoded_batch(adapter, image)
    scorer = LearnedScorer(adapter.text_width)
    soft = scorer.soft(tokens)
    loss = forward_pruned(adapter, inputs, tokens, soft).logits.pow(2).mean()
    loss.backward()
    assert scorer.net[1].weight.grad is not None
    hard = scorer.decide(adapter, inputs, tokens, 0.25)
    assert [len(k) for k in hard.keep] == [16, 16]


def test_the_learned_scorer_trains_through_the_one_trainer(scenes_root, scene_vlm, tmp_path):
    """Its run is an ordinary run: a checkpoint, a log of both losses, the VLM left out and unchanged."""
    import csv

    from safetensors.torch import load_file

    from visionloom.backbones import load
    from visionloom.data.scenes import read_scene_texts
    from visionloom.pruning.config import ScorerConfig
    from visionloom.pruning.train import train_scorer

    adapter = load(scene_vlm[0])
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    texts = [t for t in read_scene_texts(scenes_root, "train") if t.task.startswith("qa")]
    run = tmp_path / "scorer"
    scorer = train_scorer(adapter, texts, ScorerConfig(steps=3, batch_size=4), seed=1, run_dir=run)
    saved = load_file(str(run / "checkpoints" / "step_0000003" / "model.safetensors"))
    assert set(saved) == {f"scorer.{name}" for name in scorer.state_dict()}  # the VLM is not written
    assert all(torch.equal(saved[f"scorer.{k}"], v) for k, v in scorer.state_dict().items())
    with open(run / "train_log.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("loss")]
    assert rows and {"answer_loss", "budget_loss"} <= set(rows[0])
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())
    assert not scorer.training


def test_prune_eval_writes_table_plot_and_keeps_accuracy_at_full_keep(scenes_root, scene_vlm, tmp_path):
    from visionloom.pruning.config import PruneConfig
    from visionloom.pruning.evaluate import evaluate_pruning, read_questions, run_pruner
    from visionloom.vlm.evaluate import answer_accuracy

    directory, _ = scene_vlm
    config = PruneConfig(vlm=str(directory), max_questions=12, batch_size=6, keep_ratios=[1.0, 0.25])
    config.pruners = ["random", "tower-attention", "text-attention", "learned"]
    config.scorer.steps, config.scorer.batch_size = 2, 4
    report = evaluate_pruning(config, scenes_root, tmp_path, progress=False)
    results = report["results"]
    assert set(results) == {"keep-all", "random", "tower-attention", "text-attention", "learned"}
    assert all(set(by_ratio) == {"0.25"} for name, by_ratio in results.items() if name != "keep-all")
    assert results["random"]["0.25"]["image_tokens_kept"] == 16
    assert (
        results["random"]["0.25"]["mflops_per_question"] < results["keep-all"]["1.0"]["mflops_per_question"]
    )
    # FastV's layer 0 runs at full length, so it costs more than dropping before the language model.
    assert (
        results["text-attention"]["0.25"]["mflops_per_question"]
        > results["random"]["0.25"]["mflops_per_question"]
    )
    assert (tmp_path / "accuracy_vs_tokens.png").stat().st_size > 0
    assert "| random | 25% | 16.0 |" in (tmp_path / "prune_table.md").read_text()
    # text-attention needs eager attention: every row, keep-all included, is timed with it.
    assert (
        report["attention"] == "eager"
        and "attention eager in every row" in (tmp_path / "prune_table.md").read_text()
    )
    # Keep-all through the pruning path answers exactly as the plain model does.
    from visionloom.backbones import load

    adapter = load(directory)
    texts = read_questions(config, scenes_root)
    plain = answer_accuracy(adapter, texts, batch_size=6)["all"]
    assert run_pruner(adapter, KeepAll(), texts, 1.0, 6)["accuracy"] == plain


def test_text_attention_in_evaluation_ranks_from_the_prompt_not_the_answer(
    scenes_root, scene_vlm, monkeypatch
):
    """The answer is teacher-forced in evaluation; swapping it must not change what is kept."""
    from visionloom.backbones import load
    from visionloom.pruning.config import PruneConfig
    from visionloom.pruning.evaluate import read_questions, run_pruner

    adapter = load(scene_vlm[0])
    texts = read_questions(PruneConfig(), scenes_root)[:6]
    swapped = [replace(text, answer="yes" if text.answer != "yes" else "no") for text in texts]
    decisions = []
    decide = TextAttention.decide

    def recording(self, *args, **kwargs):
        decisions.append(decide(self, *args, **kwargs))
        return decisions[-1]

    monkeypatch.setattr(TextAttention, "decide", recording)
    for questions in (texts, swapped):
        run_pruner(adapter, TextAttention(layer=0), questions, 0.25, 6)
    first, second = decisions
    assert all(torch.equal(a, b) for a, b in zip(first.keep, second.keep, strict=True))
    # The last real token (inside the answer) would rank differently.
    batch = AnswerCollate(adapter)(texts)
    tokens = adapter.encode_images(batch["inputs"])
    from_the_end = decide(TextAttention(layer=0), adapter, batch["inputs"], tokens, 0.25)
    assert any(not torch.equal(a, b) for a, b in zip(first.keep, from_the_end.keep, strict=True))


class UnevenPruner:
    """Keeps the first `keep_ratio` of every other image's tokens and a quarter of that of the rest,
    so the samples of a batch drop different counts."""

    name = "uneven"

    def decide(self, adapter, inputs, tokens, keep_ratio: float, *, query_positions=None) -> Decision:
        keep = []
        for image, count in enumerate(tokens.counts):
            share = keep_ratio if image % 2 == 0 else keep_ratio / 4
            keep.append(torch.arange(max(1, int(count * share))))
        return Decision(keep=keep)


def test_prune_eval_gives_the_same_answers_under_left_and_right_padding(scenes_root, scene_vlm, monkeypatch):
    """The answer labels follow the pruned layout; FastV ranks from each sample's last prompt token.

    Compared where accuracy is computed: the logits that predict each answer token, and the targets.
    """
    import visionloom.pruning.evaluate as prune_evaluate
    from visionloom.backbones import load
    from visionloom.pruning.config import PruneConfig
    from visionloom.pruning.evaluate import read_questions, run_pruner

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    answers_correct = prune_evaluate.answers_correct

    def recording(logits, labels):
        predicting = labels[:, 1:] != -100  # [B, S'-1]
        seen.append((logits[:, :-1][predicting], labels[:, 1:][predicting]))
        return answers_correct(logits, labels)

    monkeypatch.setattr(prune_evaluate, "answers_correct", recording)
    adapter = load(scene_vlm[0])
    texts = read_questions(PruneConfig(), scenes_root)[:12]
    per_side = {}
    for side in SIDES:
        seen.clear()
        with padded_on(adapter, side):
            for pruner, ratio in (
                (KeepAll(), 1.0),
                (UnevenPruner(), 0.5),
                (RandomPruner(seed=2), 0.25),
                (TextAttention(0), 0.25),
            ):
                run_pruner(adapter, pruner, texts, ratio, 6)
        per_side[side] = list(seen)
    assert len(per_side["left"]) == len(per_side["right"]) == 8  # 4 pruners x 2 batches
    for (left_logits, left_targets), (right_logits, right_targets) in zip(
        per_side["left"], per_side["right"], strict=True
    ):
        assert torch.equal(left_targets, right_targets) and len(left_targets) >= 12  # every answer token
        torch.testing.assert_close(left_logits, right_logits, atol=1e-4, rtol=1e-4)


def test_question_sets_load_from_a_local_json_with_errors_naming_the_item(scenes_root, tmp_path):
    import json

    from visionloom.pruning.config import PruneConfig
    from visionloom.pruning.evaluate import read_questions

    image = tmp_path / "pictures" / "one.png"
    image.parent.mkdir()
    image.write_bytes(next((scenes_root / "images").glob("*.png")).read_bytes())
    path = tmp_path / "questions.json"
    path.write_text(
        json.dumps([{"image": "pictures/one.png", "question": "what color is the circle?", "answer": "red"}])
    )
    texts = read_questions(PruneConfig(questions=str(path)), scenes_root)
    assert [(t.image_path, t.prompt, t.answer) for t in texts] == [
        (image.resolve(), "<image>\nwhat color is the circle?", "red")
    ]
    path.write_text(json.dumps([{"image": "pictures/one.png", "question": "q"}]))
    with pytest.raises(
        ValueError, match=r"questions.json: 1 problem\(s\):\n  item 0: needs image, question and answer"
    ):
        read_questions(PruneConfig(questions=str(path)), scenes_root)
