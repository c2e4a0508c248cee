"""How much attention each patch gets inside the vision tower, taken from the one tower pass.

transformers 5 returns no attention weights from CLIP or SigLIP, and `sdpa` returns none anywhere.
So the weights at one block are recomputed here from that block's own norm, query and key
projections (and, for Qwen2.5-VL, its rotary embedding), applied to the block's input. The pass
already returned that input as `hidden_states[block]`: `hidden_states[0]` is the embeddings and
`hidden_states[i]` is the output of block i-1. The tower never runs a second time.
This is written by hand because no library gives one block's attention probabilities without
running the tower again.

The parts every family shares are here: one block's attention and keys for CLIP/SigLIP-style
encoder blocks, the softmax over the keys, block means. A family whose tower differs (Qwen's
windows and rotary, InternViT, Pixtral, Gemma 4) keeps its own block function in its module.
They return scores on the tower's patches; each adapter's `tower_attention_scores` maps them onto
the image's placeholder tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

from visionloom.backbones.types import ImageGeometry

QUERY_CHUNK = 1024  # query rows per softmax; bounds memory at [heads, 1024, patches]


def block_index(block: int, depth: int) -> int:
    """A block number (negative counts from the end) as an index into the tower's `depth` blocks."""
    if not -depth <= block < depth:
        raise ValueError(f"tower block {block} does not exist: the tower has {depth} blocks")
    return block % depth


def require_hidden_states(hidden_states: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...]:
    if hidden_states is None:
        raise ValueError(
            "these VisionTokens carry no tower hidden states; build them with the adapter's encode_images"
        )
    return hidden_states


def attention_received(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """query [heads, Q, d], key [heads, K, d] -> [K]: softmax(q k^T * scale), averaged over heads and queries."""
    heads, queries, _ = query.shape
    key = key.float()
    total = key.new_zeros(key.shape[1])
    for start in range(0, queries, QUERY_CHUNK):
        logits = torch.matmul(query[:, start : start + QUERY_CHUNK].float(), key.transpose(1, 2)) * scale
        total += logits.softmax(-1).sum((0, 1))  # [K]
    return total / (heads * queries)


def encoder_block_qk(
    tower: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...] | None, block: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CLIP or SigLIP encoder block `block`: queries and keys [tiles, heads, P, d] and the scale."""
    layers = getattr(tower, "vision_model", tower).encoder.layers
    index = block_index(block, len(layers))
    layer = layers[index]
    # [tiles, P, C]: the input of block `index`, from the same pass
    hidden = require_hidden_states(hidden_states)[index]
    normed = layer.layer_norm1(hidden)
    attention = layer.self_attn
    tiles, length, _ = hidden.shape

    def split_heads(projected: torch.Tensor) -> torch.Tensor:  # [tiles, P, C] -> [tiles, heads, P, d]
        return projected.view(tiles, length, attention.num_heads, attention.head_dim).transpose(1, 2)

    return split_heads(attention.q_proj(normed)), split_heads(attention.k_proj(normed)), attention.scale


@torch.no_grad()
def encoder_block_attention(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    block: int,
    query: Literal["cls", "all"],
) -> torch.Tensor:
    """CLIP or SigLIP encoder: [tiles, P], the attention each position receives at `block`.

    query="cls" takes the first position's row (CLIP's class token, as VisionZip and PruMerge do);
    query="all" averages over every query (SigLIP has no class token).
    """
    queries, keys, scale = encoder_block_qk(tower, hidden_states, block)
    if query == "cls":
        queries = queries[:, :, :1]
    return torch.stack([attention_received(queries[t], keys[t], scale) for t in range(len(keys))])


@torch.no_grad()
def encoder_block_keys(
    tower: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...] | None, block: int
) -> torch.Tensor:
    """CLIP or SigLIP encoder: [tiles, P, heads * d], each position's attention key at `block`
    (VisionZip compares these to merge its contextual tokens)."""
    _, keys, _ = encoder_block_qk(tower, hidden_states, block)
    return keys.transpose(1, 2).flatten(2)


@torch.no_grad()
@torch.no_grad()
@torch.no_grad()
@torch.no_grad()
@torch.no_grad()
@torch.no_grad()
def block_mean(per_patch: torch.Tensor, rows: int, cols: int, block: int) -> torch.Tensor:
    """[rows * block * cols * block, ...] over a patch grid in raster order -> [rows * cols, ...]: the
    mean over each block x block patch square, squares in raster order (a 2x2 merger's unfold, a
    pooling kernel, a pixel shuffle all group patches so)."""
    grid = per_patch.reshape(rows, block, cols, block, *per_patch.shape[1:])
    return grid.mean((1, 3)).reshape(rows * cols, *per_patch.shape[1:])


def block_means(
    per_image: list[torch.Tensor], geometries: list[ImageGeometry], block: int
) -> list[torch.Tensor]:
    """Per image [patches, ...] -> [tokens, ...]: `block_mean` over each image's token grid."""
    return [block_mean(values, *g.token_grid, block) for values, g in zip(per_image, geometries, strict=True)]


@torch.no_grad()
def attention_per_image(query_keys: list[tuple[torch.Tensor, torch.Tensor, float]]) -> list[torch.Tensor]:
    """Per image [patches]: the mean attention each patch receives, from per-image queries and keys
    [heads, patches, d] and the scale (`pixtral_block_qk`, `gemma4_block_qk`)."""
    return [attention_received(queries, keys, scale) for queries, keys, scale in query_keys]


def keys_per_image(query_keys: list[tuple[torch.Tensor, torch.Tensor, float]]) -> list[torch.Tensor]:
    """Per image [patches, heads * d]: each patch's attention key, from the same per-image triples."""
    return [keys.transpose(0, 1).flatten(1) for _queries, keys, _scale in query_keys]
