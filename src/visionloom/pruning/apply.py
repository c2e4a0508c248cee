"""Apply a pruning decision through the image-token layer, keeping the model consistent.

A decision says, per image, which of its tokens stay (indices into the image's placeholders) or
how much each counts (soft weights). Applying it:

1. inserts the image embeddings as the layer does (same checks), scaled by the soft weights;
2. computes everything position-dependent on the FULL sequence, as the unpruned model would:
   position ids (`arange` for 1-D rotary models, Qwen2.5-VL's 3-D `get_rope_index`) and any
   per-token ids the family takes (Gemma3's token types);
3. gathers the kept positions of every one of those together (embeddings, attention mask,
   position ids, per-token ids), so they cannot disagree, and pads samples that keep different
   counts on the side the batch was padded on (`sequence_layout`): under left padding every row
   still ends at its last real token.

Keeping everything therefore reproduces the unpruned inputs exactly, which the tests check as
bit-identical logits for every family. Layout placeholders (LLaVA-NeXT's row newlines) are
always kept.

A decision with `from_layer=K` (FastV) or `stages` (PDrop) drops tokens inside the language
model: the model then runs in stretches of layers, each on the tokens still present, with masks
and positions gathered the same way (`prefill.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.types import LayerOutput, MultimodalInputs, VisionTokens
from visionloom.pruning.decision import Decision


@dataclass
class PrunedSequence:
    """The language model's inputs after pruning; every tensor has the same (shorter) sequence axis."""

    inputs_embeds: torch.Tensor  # [B, S', D]
    attention_mask: torch.Tensor  # [B, S']
    model_kwargs: dict[str, torch.Tensor]  # position ids and per-token ids, gathered
    kept_positions: list[torch.Tensor]  # per sample: positions of the full sequence that remain
    image_token_mask: torch.Tensor  # [B, S'] which of the remaining positions are image tokens
    layout: torch.Tensor  # [B, S'] the full-sequence position each one comes from, -1 for fill


def full_sequence_kwargs(
    adapter: ImageTokenAdapter, inputs: MultimodalInputs, tokens: VisionTokens, *, generation: bool = False
) -> dict[str, torch.Tensor]:
    """Position ids, per-token ids and what the language model takes from the vision pass
    (`vision_model_kwargs`) for the full sequence, exactly as the unpruned model has them.

    `generation=True`: the 1-D positions `generate` gives (each row counts its real tokens from 0,
    so a left-padded row starts at 0 too); a plain forward without positions uses 0..S-1 on every
    row. Qwen2.5-VL's 3-D positions are the same either way (`get_rope_index` skips padding).
    """
    kwargs = {**adapter.language_model_kwargs(inputs), **adapter.vision_model_kwargs(inputs, tokens)}
    if "position_ids" not in kwargs:
        batch, length = inputs.input_ids.shape
        if generation:
            counted = inputs.attention_mask.long().cumsum(-1) - 1
            positions = counted.masked_fill(inputs.attention_mask == 0, 0)
        else:
            positions = torch.arange(length, device=inputs.input_ids.device).expand(batch, length)
        kwargs["position_ids"] = positions + adapter.position_offset
    return kwargs


@contextmanager
def only_layers(adapter: ImageTokenAdapter, start: int, stop: int | None = None) -> Iterator[None]:
    """Run only language-model layers start..stop-1 (everything is restored afterwards).

    The text models look up `config.layer_types[i]` by the loop position i (sliding or full
    attention), so those are cut the same way as the layers.
    """
    language = adapter.language_module
    layers, config = language.layers, language.config
    stop = len(layers) if stop is None else stop
    if not 0 <= start < stop <= len(layers):
        raise ValueError(
            f"layers {start}..{stop - 1} are not within the language model's {len(layers)} layers"
        )
    layer_types = getattr(config, "layer_types", None)
    language.layers = layers[start:stop]
    if layer_types is not None:
        config.layer_types = layer_types[start:stop]
    try:
        yield
    finally:
        language.layers = layers
        if layer_types is not None:
            config.layer_types = layer_types


@contextmanager
def hidden_leaving(adapter: ImageTokenAdapter) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the hidden state [B, S, D] leaving the last language-model layer run (under
    `only_layers`, the stretch's last), as the next layer would receive it: the input of the text
    model's final norm. A layer's own output would miss what the model adds between layers
    (Qwen3-VL's DeepStack features)."""
    captured: dict[str, torch.Tensor] = {}

    def keep_input(_module, args):
        captured["hidden"] = args[0]

    handle = adapter.language_module.norm.register_forward_pre_hook(keep_input)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def attention_weights_of(adapter: ImageTokenAdapter, layer: int) -> Iterator[dict[str, torch.Tensor]]:
    """Capture language-model `layer`'s attention probabilities [B, H, S, S] from its own attention
    module (hooked before any layers are cut). transformers' `output_attentions` records from
    hooks placed on the layers present at a model's first such call, which misses a stretch that
    starts later; and only this one layer's weights are needed."""
    captured: dict[str, torch.Tensor] = {}

    def keep_weights(_module, _args, output):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise ValueError(
                f"{adapter.family}: the language model's attention '{adapter.attention_implementation()}' "
                "returns no weights; ranking by attention needs eager attention (adapter.use_eager_attention())"
            )
        captured["weights"] = weights

    handle = adapter.language_module.layers[layer].self_attn.register_forward_hook(keep_weights)
    try:
        yield captured
    finally:
        handle.remove()


def shallow_pass(
    adapter: ImageTokenAdapter, inputs: MultimodalInputs, tokens: VisionTokens, layer: int, **flags
) -> tuple[LayerOutput, torch.Tensor]:
    """Only layers 0..layer-1 on the unpruned sequence: their output, and the hidden state [B, S, D]
    that enters language-model `layer`. Decoder-only families, or T5Gemma2's encoder alone."""
    with hidden_leaving(adapter) as captured, only_layers(adapter, 0, layer):
        output = adapter.forward(inputs, tokens, use_cache=False, **flags)
    return output, captured["hidden"]


def validate(decision: Decision, tokens: VisionTokens, structural: list[tuple[int, ...]]) -> None:
    for name in ("keep", "weights"):
        values = getattr(decision, name)
        if values is not None and len(values) != len(tokens.counts):
            raise ValueError(
                f"decision.{name} has {len(values)} entries but the batch has {len(tokens.counts)} images"
            )
    for image, count in enumerate(tokens.counts):
        if decision.weights is not None and decision.weights[image].shape != (count,):
            raise ValueError(
                f"image {image}: {tuple(decision.weights[image].shape)} soft weights for {count} tokens"
            )
        if decision.keep is not None:
            keep = decision.keep[image]
            if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= count):
                raise ValueError(f"image {image}: kept indices outside 0..{count - 1}")
            if keep.numel() != keep.unique().numel() or not torch.equal(keep, keep.sort().values):
                raise ValueError(f"image {image}: kept indices must be sorted and distinct (raster order)")
            missing = set(structural[image]) - set(keep.tolist())
            if missing:
                raise ValueError(
                    f"image {image}: layout tokens {sorted(missing)} (row newlines) must be kept"
                )


def last_real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """LongTensor [B]: each row's last non-padding position, under left or right padding."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).int().argmax(1)


def padding_side(attention_mask: torch.Tensor) -> str:
    """'left' when some row's padding comes before its tokens, else 'right' (also for no padding)."""
    mask = attention_mask.bool()
    padded_rows = ~mask.all(dim=1)
    return "left" if bool((~mask[:, 0] & padded_rows).any()) else "right"


def sequence_layout(attention_mask: torch.Tensor, kept: list[torch.Tensor]) -> torch.Tensor:
    """LongTensor [B, S']: for each position of the pruned batch, the full-sequence position it comes
    from, or -1 where a row shorter than the longest is filled.

    Rows keep the padding side of the batch. Right padding: kept tokens, then the row's own padding
    positions, then fill. Left padding: fill, the row's own padding positions, then kept tokens, so
    every row still ends at its last real token (`logits[:, -1]` and generation read there). Keeping
    every token therefore reproduces the padded batch position for position.
    """
    batch = attention_mask.shape[0]
    longest = max(len(positions) for positions in kept)
    left = padding_side(attention_mask) == "left"
    layout = torch.full((batch, longest), -1, dtype=torch.long)
    for row in range(batch):
        padding = (attention_mask[row] == 0).nonzero().flatten().cpu()
        room = longest - len(kept[row])
        if left:
            positions = torch.cat(
                [padding[max(0, len(padding) - room) :] if room else padding[:0], kept[row].cpu()]
            )
            layout[row, longest - len(positions) :] = positions
        else:
            positions = torch.cat([kept[row].cpu(), padding[:room]])
            layout[row, : len(positions)] = positions
    return layout


def per_token(value, inputs: MultimodalInputs) -> bool:
    """Whether a language-model argument is per token ([..., B, S]) and so follows the kept tokens."""
    return isinstance(value, torch.Tensor) and tuple(value.shape[-2:]) == tuple(inputs.input_ids.shape)


def gather_layout(tensor: torch.Tensor, rows: torch.Tensor, fill) -> torch.Tensor:
    """[..., B, S] -> [..., B, S']: each row's positions in the layout `rows` [B, S'], `fill` where -1."""
    source = rows.clamp(min=0).to(tensor.device)  # [B, S']
    index = source.expand(*tensor.shape[:-2], *source.shape)
    out = tensor.gather(-1, index)
    return out.masked_fill((rows < 0).to(tensor.device), fill)


def prune_sequence(
    adapter: ImageTokenAdapter,
    inputs: MultimodalInputs,
    tokens: VisionTokens,
    decision: Decision,
    model_kwargs: dict[str, torch.Tensor] | None = None,
) -> PrunedSequence:
    """The pruned inputs of the first layer. `model_kwargs`: the full sequence's positions and
    per-token ids when not `full_sequence_kwargs(adapter, inputs, tokens)` (generation passes its own)."""
    structural = [adapter.structural_offsets(g) for g in inputs.geometries]
    validate(decision, tokens, structural)
    if decision.embeds is not None:
        if decision.embeds.shape != tokens.embeds.shape:
            raise ValueError(
                f"decision.embeds {tuple(decision.embeds.shape)} must replace embeddings {tuple(tokens.embeds.shape)}"
            )
        tokens = replace(tokens, embeds=decision.embeds)
    if decision.from_layer or decision.stages:
        raise ValueError(
            "prune_sequence prepares the first layer's inputs; a decision that drops inside the language "
            "model (from_layer, stages) runs through prefill() or forward_pruned()"
        )
    embeds = adapter.insert(inputs, tokens)  # [B, S, D], the layer's checks included
    kwargs = full_sequence_kwargs(adapter, inputs, tokens) if model_kwargs is None else model_kwargs
    batch, length = inputs.input_ids.shape
    keep_mask = inputs.attention_mask.bool().clone()  # [B, S]; padding goes, and is re-added below
    scale = torch.ones(batch, length, dtype=embeds.dtype, device=embeds.device)
    for image, (sample, positions) in enumerate(inputs.placeholders()):
        positions = positions.to(keep_mask.device)  # [counts_i] where the image's placeholders sit
        if decision.weights is not None:
            scale[sample, positions] = decision.weights[image].to(embeds)
        if decision.keep is not None:
            keep_mask[sample, positions] = False
            keep_mask[sample, positions[decision.keep[image].to(keep_mask.device)]] = True
    if decision.weights is not None:
        embeds = embeds * scale.unsqueeze(-1)  # all-ones weights leave every value as it was

    kept = [keep_mask[row].nonzero().flatten() for row in range(batch)]
    rows = sequence_layout(inputs.attention_mask, kept)  # [B, S'] source position, -1 for fill
    if rows.shape == (batch, length) and bool((rows == torch.arange(length)).all()):
        # Nothing dropped: the layout is the batch itself, and gathering would only copy it.
        return PrunedSequence(
            inputs_embeds=embeds,
            attention_mask=inputs.attention_mask,
            model_kwargs=dict(kwargs),
            kept_positions=kept,
            image_token_mask=inputs.image_token_mask,
            layout=rows,
        )

    def gather(tensor: torch.Tensor, fill) -> torch.Tensor:
        return gather_layout(tensor, rows, fill)

    gathered = {key: gather(value, 0) if per_token(value, inputs) else value for key, value in kwargs.items()}
    return PrunedSequence(
        # [B, S, D] gathered as [D, B, S]; contiguous again, as the model got it unpruned.
        inputs_embeds=gather(embeds.movedim(-1, 0), 0.0).movedim(0, -1).contiguous(),
        attention_mask=gather(inputs.attention_mask, 0),
        model_kwargs=gathered,
        kept_positions=kept,
        image_token_mask=gather(inputs.image_token_mask, False),
        layout=rows,
    )
