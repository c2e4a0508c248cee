"""The pruned prefill in stretches of language-model layers, each with its own key/value cache.

A decision that drops tokens before the first layer is one stretch. FastV (`from_layer=K`) is
two: layers 0..K-1 on every token, K.. on the kept ones. PDrop adds a stretch per stage, and its
ranking happens here, between two stretches, from the attention the query token gives the image
tokens at the last layer before the drop; the prefill is not run twice.

Each stretch keeps its own attention mask and, when asked, its own cache, so that decoding
(`generate.py`) can feed a new token through the stretches in order: a layer after a drop never
sees the dropped tokens, a layer before it still sees all of them, as in the prefill.

Every kept token keeps its position in the full sequence (`full_sequence_kwargs`); the stretches
gather masks, positions and per-token ids from the full sequence by one layout (`sequence_layout`),
and hidden states from the previous stretch by the same layout, so none can disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.types import LayerOutput, MultimodalInputs, VisionTokens
from visionloom.pruning.apply import (
    attention_weights_of,
    full_sequence_kwargs,
    gather_layout,
    hidden_leaving,
    last_real_positions,
    only_layers,
    per_token,
    prune_sequence,
    sequence_layout,
)
from visionloom.pruning.decision import Decision, DropStage


@dataclass
class Stretch:
    """Language-model layers start..stop-1 and what they attend over."""

    start: int
    stop: int
    attention_mask: torch.Tensor  # [B, S_i], grows by one column per decoded token
    model_kwargs: dict[str, torch.Tensor]  # positions and per-token ids of the prefill, [..., B, S_i]
    cache: DynamicCache | None = None


@dataclass
class Prefill:
    """The prefill's output (of the last stretch) and what decoding continues from."""

    output: LayerOutput  # logits [B, S_last, V] (encoder output for T5Gemma2)
    stretches: list[Stretch]
    layout: torch.Tensor  # [B, S_last]: the full-sequence position of each column, -1 for fill
    keep: list[torch.Tensor]  # per image: the placeholders still present after the last drop
    full_positions: torch.Tensor  # [..., B, S] the full sequence's position ids
    # per stretch: (layers it has, real tokens per sample [B]) for the FLOPs estimate
    lengths: list[tuple[int, torch.Tensor]]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.stretches[-1].attention_mask


def segment_cache(adapter: ImageTokenAdapter, start: int) -> DynamicCache:
    """A key/value cache for language-model layers start.. run alone (`only_layers`).

    Written here because no library runs a model in stretches: the models read the cache's length
    from its first slots (slot 0, the first full-attention slot), which a stretch starting later
    never fills, so each of those slots is made the same object as the stretch's first layer of the
    same kind (sliding window or full); the layers of the stretch write only their own slots.
    """
    cache = DynamicCache(config=adapter.language_module.config)
    sliding = cache.is_sliding
    for slot in range(min(start, len(cache.layers))):
        twin = next((j for j in range(start, len(cache.layers)) if sliding[j] == sliding[slot]), start)
        cache.layers[slot] = cache.layers[twin]
    return cache


def run_stretch(
    adapter: ImageTokenAdapter,
    stretch: Stretch,
    hidden: torch.Tensor,
    model_kwargs: dict[str, torch.Tensor],
    *,
    last: bool,
    **flags,
) -> tuple[LayerOutput, torch.Tensor | None]:
    """The stretch's layers on `hidden` [B, q, D]: the output, and the hidden state leaving it
    (None for the last stretch, whose output holds the logits)."""
    shortened = MultimodalInputs(
        input_ids=torch.zeros(stretch.attention_mask.shape, dtype=torch.long),  # not read
        attention_mask=stretch.attention_mask,
        image_token_mask=torch.zeros(stretch.attention_mask.shape, dtype=torch.bool),
        image_spans=[],
        geometries=[],
    )
    if stretch.cache is not None:
        flags = {**flags, "past_key_values": stretch.cache, "use_cache": True}
    else:
        # A cache the model made itself would be sized for the layers present, not indexed by theirs.
        flags = {**flags, "use_cache": False}
    if last:
        with only_layers(adapter, stretch.start, stretch.stop):
            return adapter.run_language_model(shortened, hidden, model_kwargs, **flags), None
    with hidden_leaving(adapter) as got, only_layers(adapter, stretch.start, stretch.stop):
        output = adapter.run_language_model(shortened, hidden, model_kwargs, **flags)
    return output, got["hidden"]


def drop_stages(decision: Decision) -> tuple[Decision, list[DropStage]]:
    """The decision's layer-0 part and its drops inside the language model, in layer order."""
    if decision.from_layer:
        if decision.weights is not None:
            raise ValueError("soft weights scale the inserted embeddings; they cannot start at a later layer")
        if decision.keep is None:
            raise ValueError(f"a drop at layer {decision.from_layer} (from_layer) needs the kept indices")
        if decision.stages:
            raise ValueError("a decision has either from_layer (FastV) or stages (PDrop), not both")
        first = replace(decision, keep=None, from_layer=0, hidden_entering=None)
        return first, [DropStage(layer=decision.from_layer, keep=decision.keep)]
    layers = [stage.layer for stage in decision.stages]
    if layers != sorted(set(layers)) or (layers and layers[0] < 1):
        raise ValueError(f"drop stages must be at increasing layers from 1 on, got {layers}")
    return replace(decision, stages=[]), list(decision.stages)


def rank_stage(
    adapter: ImageTokenAdapter,
    inputs: MultimodalInputs,
    stage: DropStage,
    keep: list[torch.Tensor],
    attention: torch.Tensor,
    layout: torch.Tensor,
    query_positions: torch.Tensor,
) -> list[torch.Tensor]:
    """PDrop's choice: per image, the share `stage.keep_ratio` of its remaining candidates that the
    query token attends to most at the last layer before the drop (mean over heads), and its
    layout tokens. attention [B, H, S_i, S_i] is that layer's, over the stretch's layout [B, S_i]."""
    chosen = []
    for image, (sample, positions) in enumerate(inputs.placeholders()):
        row = (layout[sample] == int(query_positions[sample])).nonzero().flatten()
        if len(row) != 1:
            raise ValueError(
                f"sample {sample}: the query position {int(query_positions[sample])} was dropped"
            )
        structural = torch.tensor(adapter.structural_offsets(inputs.geometries[image]), dtype=torch.long)
        present = keep[image].cpu()
        pool = present[~torch.isin(present, structural)]
        # The column of each candidate in this stretch's layout (rows may end in fill, so no search).
        matches = layout[sample].cpu()[None, :] == positions[pool][:, None]  # [n, S_i]
        if not bool(matches.any(1).all()):
            raise AssertionError(f"image {image}: its kept tokens are not in the stretch's layout")
        columns = matches.int().argmax(1)  # [n]
        scores = attention[sample, :, int(row), columns.to(attention.device)].float().mean(0).cpu()  # [n]
        count = max(1, math.ceil(stage.keep_ratio * len(pool)))
        picked = pool[scores.topk(count).indices]
        chosen.append(torch.cat([picked, structural[torch.isin(structural, present)]]).sort().values)
    return chosen


def fixed_keep(stage: DropStage, keep: list[torch.Tensor]) -> list[torch.Tensor]:
    """The indices a drop decided beforehand (FastV), each a subset of what is still kept."""
    new_keep = [k.cpu() for k in stage.keep]
    for image, (old, new) in enumerate(zip(keep, new_keep, strict=True)):
        if not bool(torch.isin(new, old.cpu()).all()):
            raise ValueError(f"image {image}: the drop at layer {stage.layer} keeps tokens already dropped")
    return new_keep


def drop_rows(
    inputs: MultimodalInputs,
    keep: list[torch.Tensor],
    new_keep: list[torch.Tensor],
    kept_rows: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Each sample's remaining full-sequence positions, without the image tokens this drop removes."""
    kept_rows = list(kept_rows)
    for image, (sample, positions) in enumerate(inputs.placeholders()):
        dropped = positions[keep[image][~torch.isin(keep[image].cpu(), new_keep[image])]]
        kept_rows[sample] = kept_rows[sample][~torch.isin(kept_rows[sample].cpu(), dropped.cpu())]
    return kept_rows


def follow_tokens(
    hidden: torch.Tensor, layout: torch.Tensor, new_layout: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[B, S, D] hidden states laid out as `layout` -> [B, S_next, D] laid out as `new_layout`."""
    # Where each new column sits in the current layout.
    where = torch.full(attention_mask.shape, -1, dtype=torch.long)  # [B, S_full]
    for row in range(layout.shape[0]):
        present = layout[row] >= 0
        where[row, layout[row][present]] = present.nonzero().flatten()
    columns = gather_layout(where, new_layout, -1)  # [B, S_next]
    return gather_layout(hidden.movedim(-1, 0), columns, 0.0).movedim(0, -1).contiguous()


def prefill(
    adapter: ImageTokenAdapter,
    inputs: MultimodalInputs,
    tokens: VisionTokens,
    decision: Decision,
    *,
    generation: bool = False,
    use_cache: bool = False,
    query_positions: torch.Tensor | None = None,
    **flags,
) -> Prefill:
    """Run the pruned prefill. `generation`: positions as `generate` gives them (see
    `full_sequence_kwargs`); `use_cache`: a cache per stretch, for decoding. `query_positions` [B]:
    the token whose attention ranks PDrop's stages (default: each row's last real token). `flags`
    go to the last stretch (T5Gemma2's `decoder_input_ids`, `output_attentions`)."""
    layers = len(adapter.language_module.layers)
    first, stages = drop_stages(decision)
    if stages:
        adapter.refuse_layer_drops()
    if stages and stages[-1].layer >= layers:
        raise ValueError(
            f"a drop at layer {stages[-1].layer} leaves no layer after it: the language model has {layers}"
        )
    encoder_decoder = bool(adapter.model.config.is_encoder_decoder)
    # generate gives an encoder no positions of its own: it counts 0..S-1 as in a forward.
    full_kwargs = full_sequence_kwargs(adapter, inputs, tokens, generation=generation and not encoder_decoder)
    pruned = prune_sequence(adapter, inputs, tokens, first, full_kwargs)
    if query_positions is None:
        query_positions = last_real_positions(inputs.attention_mask)
    caching = use_cache and not encoder_decoder  # an encoder keeps no cache
    hidden, layout, kwargs = pruned.inputs_embeds, pruned.layout, pruned.model_kwargs
    kept_rows = [positions.cpu() for positions in pruned.kept_positions]
    keep = first.keep or [torch.arange(count) for count in tokens.counts]
    stretches, lengths, start = [], [], 0
    skip_first = decision.hidden_entering is not None and decision.from_layer and not caching
    if skip_first and tuple(decision.hidden_entering.shape[:2]) != tuple(inputs.input_ids.shape):
        raise ValueError(
            f"decision.hidden_entering {tuple(decision.hidden_entering.shape)} is not of this batch "
            f"{tuple(inputs.input_ids.shape)}"
        )
    for stage in stages:
        # 1. run the layers up to the drop (capturing the attention that ranks, for PDrop)
        stretch = Stretch(start, stage.layer, gather_layout(inputs.attention_mask, layout, 0), kwargs)
        stretch.cache = segment_cache(adapter, start) if caching else None
        ranking = stage.keep is None
        if ranking and stage.keep_ratio is None:
            raise ValueError(f"the drop at layer {stage.layer} has neither kept indices nor a keep ratio")
        if skip_first and start == 0:
            hidden = decision.hidden_entering  # FastV's ranking pass computed it
        elif ranking:
            with attention_weights_of(adapter, stage.layer - 1) as attention:
                hidden = run_stretch(adapter, stretch, hidden, kwargs, last=False)[1]
        else:
            hidden = run_stretch(adapter, stretch, hidden, kwargs, last=False)[1]
        stretches.append(stretch)
        lengths.append((stage.layer - start, stretch.attention_mask.sum(1)))
        # 2. rank (PDrop) or take the decided indices; 3. drop those tokens' rows
        if ranking:
            new_keep = rank_stage(adapter, inputs, stage, keep, attention["weights"], layout, query_positions)
        else:
            new_keep = fixed_keep(stage, keep)
        kept_rows = drop_rows(inputs, keep, new_keep, kept_rows)
        keep = new_keep
        # 4. re-lay the batch on the rows that remain; the hidden states follow their tokens
        new_layout = sequence_layout(inputs.attention_mask, kept_rows)  # [B, S_next]
        hidden = follow_tokens(hidden, layout, new_layout, inputs.attention_mask)
        layout = new_layout
        # 5. gather the per-token model inputs (positions, token types) for the next stretch
        kwargs = {
            key: gather_layout(value, layout, 0) if per_token(value, inputs) else value
            for key, value in full_kwargs.items()
        }
        start = stage.layer
    final = Stretch(start, layers, gather_layout(inputs.attention_mask, layout, 0), kwargs)
    final.cache = segment_cache(adapter, start) if caching else None
    output, _ = run_stretch(adapter, final, hidden, kwargs, last=True, **flags)
    if not stages:
        output.inputs_embeds = pruned.inputs_embeds
    stretches.append(final)
    lengths.append((layers - start, final.attention_mask.sum(1)))
    return Prefill(output, stretches, layout, keep, full_kwargs["position_ids"], lengths)


def forward_pruned(
    adapter: ImageTokenAdapter,
    inputs: MultimodalInputs,
    tokens: VisionTokens,
    decision: Decision,
    **flags: bool,
) -> LayerOutput:
    """Run the language model on the pruned sequence (decoder-only families, T5Gemma 2's encoder).

    Position ids and per-token ids are computed on the full sequence and gathered with the kept
    embeddings; drops inside the language model (FastV's `from_layer`, PDrop's stages) run in
    stretches of layers, a decision at layer 0 in one.

    Args:
        adapter: the image-token layer of the VLM.
        inputs: from `adapter.build_inputs`.
        tokens: from `adapter.encode_images`.
        decision: from a pruner's `decide`.
        **flags: `output_attentions`, `output_hidden_states`.

    Returns:
        `LayerOutput` over the kept sequence: logits [B, S_kept, V], padded on the batch's side.
    """
    return prefill(adapter, inputs, tokens, decision, **flags).output
