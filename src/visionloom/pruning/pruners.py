"""Pruners: given an image's tokens, which to keep (or how much each counts).

One interface: `decide(adapter, inputs, tokens, keep_ratio) -> Decision`. Layout tokens (LLaVA-NeXT
newlines) are never candidates; a ratio keeps `ceil(ratio * candidates)` of the rest, at least one.

- `KeepAll`, `OnesSoft`: the invariant's references (bit-identical logits).
- `RandomPruner`: the floor.
- `ClsAttention`: vision-side importance (VisionZip / PruMerge style), the CLS token's attention
  at one tower layer, recomputed from that layer's own queries and keys on the hidden states of
  the one tower pass (transformers 5 returns no CLIP attention weights, sdpa none anywhere).
  With `merge=True` each dropped token is averaged into its most similar kept token.
- `TextAttention`: language-side (FastV style): the attention image tokens receive from the
  last text token at language-model layer K, from a pass through the first K+1 layers. The
  dropped tokens then leave the whole prefill, not only the layers after K as in FastV: a
  second pass on the shorter sequence. Splitting one forward at layer K would need the
  decoder layers driven by hand, and this keeps every family on its own forward.
- `LearnedScorer`: a small network over image-token embeddings, trained with the VLM frozen.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.types import MultimodalInputs, VisionTokens
from visionloom.pruning.apply import Decision


def candidates(adapter: ImageTokenAdapter, tokens: VisionTokens, image: int) -> torch.Tensor:
    """Indices of an image's placeholders a pruner may drop (all but layout tokens)."""
    structural = set(adapter.structural_offsets(tokens.geometries[image]))
    return torch.tensor([i for i in range(tokens.counts[image]) if i not in structural], dtype=torch.long)


def keep_top(adapter, tokens: VisionTokens, scores: list[torch.Tensor], keep_ratio: float) -> Decision:
    """Keep the highest-scoring candidates of each image, plus its layout tokens, in raster order."""
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio {keep_ratio} must be in (0, 1]")
    keep = []
    for image, image_scores in enumerate(scores):
        pool = candidates(adapter, tokens, image)
        if image_scores.shape != (tokens.counts[image],):
            raise ValueError(
                f"image {image}: {tuple(image_scores.shape)} scores for {tokens.counts[image]} tokens"
            )
        count = max(1, math.ceil(keep_ratio * len(pool)))
        chosen = pool[image_scores[pool].float().topk(count).indices]
        layout = torch.tensor(adapter.structural_offsets(tokens.geometries[image]), dtype=torch.long)
        keep.append(torch.cat([chosen.cpu(), layout]).sort().values)
    return Decision(keep=keep)


class KeepAll:
    name = "keep-all"

    def decide(self, adapter, inputs, tokens, keep_ratio: float = 1.0) -> Decision:
        return Decision(keep=[torch.arange(count) for count in tokens.counts])


class OnesSoft:
    name = "ones-soft"

    def decide(self, adapter, inputs, tokens, keep_ratio: float = 1.0) -> Decision:
        return Decision(weights=[torch.ones(count) for count in tokens.counts])


class RandomPruner:
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def decide(self, adapter, inputs, tokens, keep_ratio: float) -> Decision:
        generator = torch.Generator().manual_seed(self.seed)
        scores = [torch.rand(count, generator=generator) for count in tokens.counts]
        return keep_top(adapter, tokens, scores, keep_ratio)


# ---------------------------------------------------------------------------------------- vision side
def cls_attention(adapter: ImageTokenAdapter, tokens: VisionTokens, layer: int = -2) -> list[torch.Tensor]:
    """Per image: the CLS query's attention to each patch at tower `layer`, mean over heads [patches].

    The layer's input is `tower_hidden_states[layer - 1]` of the one pass; the attention weights are
    recomputed from that layer's own layer norm, query and key projections.
    """
    vision = adapter.config.vision_config
    if getattr(vision, "model_type", "") not in ("clip_vision_model",):
        raise NotImplementedError(
            f"{adapter.family}: CLS attention needs a CLIP-style tower with a CLS token; this tower "
            f"({getattr(vision, 'model_type', type(vision).__name__)}) has none: use the language-side "
            f"or learned pruner"
        )
    if tokens.tower_hidden_states is None:
        raise ValueError(
            "the VisionTokens carry no tower hidden states; encode with the layer's encode_images"
        )
    tower = adapter.vision_tower
    encoder_layers = getattr(tower, "vision_model", tower).encoder.layers
    index = layer % len(encoder_layers)
    block = encoder_layers[index]
    hidden = tokens.tower_hidden_states[index]  # [tiles, 1 + P, C]: the input of block `index`
    normed = block.layer_norm1(hidden)
    attention = block.self_attn
    heads, head_dim = attention.num_heads, attention.head_dim
    query = attention.q_proj(normed[:, :1]).view(hidden.shape[0], 1, heads, head_dim)  # CLS query
    keys = attention.k_proj(normed).view(hidden.shape[0], hidden.shape[1], heads, head_dim)
    logits = torch.einsum("tqhd,tkhd->thk", query, keys) * attention.scale  # [tiles, heads, 1 + P]
    weights = logits.softmax(-1).mean(1)[:, 1:]  # [tiles, P], CLS column dropped
    return list(weights)


class ClsAttention:
    name = "cls-attention"

    def __init__(self, layer: int = -2, merge: bool = False):
        self.layer, self.merge = layer, merge

    def scores(self, adapter, tokens: VisionTokens) -> list[torch.Tensor]:
        per_tile = cls_attention(adapter, tokens, self.layer)
        if len(per_tile) != len(tokens.counts):
            raise NotImplementedError(
                f"{adapter.family}: {len(per_tile)} tower tiles for {len(tokens.counts)} images (any-res tiling); "
                f"CLS scores per tile do not map onto one image's tokens one to one"
            )
        scores = []
        for image, weights in enumerate(per_tile):
            if weights.shape[0] != tokens.counts[image]:
                raise ValueError(
                    f"image {image}: {weights.shape[0]} patch scores for {tokens.counts[image]} tokens"
                )
            scores.append(weights.detach().cpu())
        return scores

    def decide(self, adapter, inputs, tokens, keep_ratio: float) -> Decision:
        return keep_top(adapter, tokens, self.scores(adapter, tokens), keep_ratio)

    def merged_tokens(self, tokens: VisionTokens, decision: Decision) -> VisionTokens:
        """PruMerge's step: every dropped embedding is averaged into its most similar kept one."""
        merged = []
        for image, embeds in enumerate(tokens.per_image()):
            keep = decision.keep[image].to(embeds.device)
            dropped = torch.ones(len(embeds), dtype=torch.bool, device=embeds.device)
            dropped[keep] = False
            kept = embeds[keep].clone()
            if dropped.any():
                similarity = (
                    nn.functional.normalize(embeds[dropped], dim=-1) @ nn.functional.normalize(kept, dim=-1).T
                )
                owner = similarity.argmax(-1)  # [dropped]
                sums = kept.index_add(0, owner, embeds[dropped])
                counts = torch.ones(len(kept), device=embeds.device).index_add(
                    0, owner, torch.ones(len(owner), device=embeds.device)
                )
                kept = sums / counts.unsqueeze(-1)
            full = embeds.clone()
            full[keep] = kept.to(full.dtype)
            merged.append(full)
        return VisionTokens(
            embeds=torch.cat(merged),
            raw=tokens.raw,
            counts=tokens.counts,
            raw_counts=tokens.raw_counts,
            geometries=tokens.geometries,
            feature_source=tokens.feature_source + "; dropped tokens merged into kept ones",
            tower_hidden_states=tokens.tower_hidden_states,
        )


# ---------------------------------------------------------------------------------------- language side
@contextmanager
def first_layers(adapter: ImageTokenAdapter, count: int):
    """Run only the language model's first `count` decoder layers (restored afterwards)."""
    language = adapter.language_module
    layers = language.layers
    if not 0 < count <= len(layers):
        raise ValueError(f"layer {count - 1} is outside the language model's {len(layers)} layers")
    language.layers = layers[:count]
    try:
        yield
    finally:
        language.layers = layers


class TextAttention:
    name = "text-attention"

    def __init__(self, layer: int = 1):
        self.layer = layer

    @torch.no_grad()
    def scores(self, adapter, inputs: MultimodalInputs, tokens: VisionTokens) -> list[torch.Tensor]:
        with first_layers(adapter, self.layer + 1):
            output = adapter.forward(inputs, tokens, output_attentions=True)
        last = inputs.attention_mask.sum(1) - 1  # [B] the last real token of each sample
        scores = []
        for sample, (start, end) in inputs.image_owner():
            attention = output.attentions[self.layer][sample, :, int(last[sample]), start:end]  # [heads, n]
            scores.append(attention.mean(0).float().cpu())
        return scores

    def decide(self, adapter, inputs, tokens, keep_ratio: float) -> Decision:
        return keep_top(adapter, tokens, self.scores(adapter, inputs, tokens), keep_ratio)


# ---------------------------------------------------------------------------------------- learned
class LearnedScorer(nn.Module):
    """An MLP over each image token's embedding -> a score; soft (sigmoid weights) in training, hard at inference."""

    name = "learned"

    def __init__(self, width: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, tokens: VisionTokens) -> list[torch.Tensor]:
        return [self.net(embeds.float()).squeeze(-1) for embeds in tokens.per_image()]

    def soft(self, tokens: VisionTokens) -> Decision:
        """Training: every token stays, weighted by sigmoid(score), so the scorer gets gradients."""
        return Decision(weights=[score.sigmoid() for score in self(tokens)])

    @torch.no_grad()
    def decide(self, adapter, inputs, tokens, keep_ratio: float) -> Decision:
        return keep_top(adapter, tokens, [s.cpu() for s in self(tokens)], keep_ratio)


PRUNERS = {
    "keep-all": KeepAll,
    "ones-soft": OnesSoft,
    "random": RandomPruner,
    "cls-attention": ClsAttention,
    "text-attention": TextAttention,
}
