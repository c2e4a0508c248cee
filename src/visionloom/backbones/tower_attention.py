"""How much attention each patch gets inside the vision tower, taken from the one tower pass.

transformers 5 returns no attention weights from CLIP or SigLIP, and `sdpa` returns none anywhere.
So the weights at one block are recomputed here from that block's own norm, query and key
projections (and, for Qwen2.5-VL, its rotary embedding), applied to the block's input. The pass
already returned that input as `hidden_states[block]`: `hidden_states[0]` is the embeddings and
`hidden_states[i]` is the output of block i-1. The tower never runs a second time.
This is written by hand because no library gives one block's attention probabilities without
running the tower again.

The functions return scores on the tower's patches. Each family adapter's
`tower_attention_scores` maps them onto the image's placeholder tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

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


def qwen_block_qk(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    grid_thw: torch.Tensor,
    window_index: torch.Tensor,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Qwen2.5-VL's full-attention block `block`: queries and keys [patches, heads, d] in the tower's
    (window) order, with the rotary angles applied as the tower applies them, and the scale.

    Only full-attention blocks (`fullatt_block_indexes`) are allowed. In the other blocks a patch is
    attended only from inside its window, so what they compare is local to a window. Qwen2-VL's
    tower has no windows: every block attends over the whole image and runs in merge-unit order.
    """
    index = block_index(block, len(tower.blocks))
    windowed = hasattr(tower, "fullatt_block_indexes")
    if windowed and index not in tower.fullatt_block_indexes:
        raise ValueError(
            f"tower block {block} (index {index}) uses windowed attention, so its scores only rank "
            f"patches within a window. Choose a full-attention block: {list(tower.fullatt_block_indexes)}"
        )
    layer = tower.blocks[index]
    attention = layer.attn
    hidden = require_hidden_states(hidden_states)[index]  # [patches, C], window order
    patches = hidden.shape[0]
    qkv = attention.qkv(layer.norm1(hidden)).reshape(patches, 3, attention.num_heads, -1)
    queries, keys = qkv[:, 0], qkv[:, 1]  # [patches, heads, d]

    # The rotary angles as the tower's forward builds them: merge-unit order, then window order.
    grid_thw, window_index = grid_thw.to(hidden.device), window_index.to(hidden.device)
    position_ids = get_vision_position_ids(grid_thw, tower.spatial_merge_size)
    cos, sin = tower.rotary_pos_emb(hidden, position_ids)
    if windowed:
        cos, sin = (
            tower.permute_input_for_window_attn(angles, window_index, seq_len=patches)
            for angles in (cos, sin)
        )
    queries, keys = apply_rotary_pos_emb_vision(queries, keys, cos, sin)
    return queries, keys, attention.scaling


def per_merged_token(
    values: torch.Tensor, tower: torch.nn.Module, window_index: torch.Tensor
) -> torch.Tensor:
    """[patches, ...] in window order -> [merged tokens, ...]: the mean over each 2x2 merge unit, in
    raster order (the merger's output order)."""
    per_unit = values.view(-1, tower.spatial_merge_size**2, *values.shape[1:]).mean(1)
    return per_unit[torch.argsort(window_index.to(values.device))]


@torch.no_grad()
def qwen_block_attention(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    grid_thw: torch.Tensor,
    window_index: torch.Tensor,
    block: int,
) -> torch.Tensor:
    """Qwen2.5-VL's tower: [merged tokens], the attention each merged token's patches receive at `block`.

    The tower runs on a window-permuted sequence, one 2x2 merge unit after another. The scores are
    computed in that order (`qwen_block_qk`), averaged over each merge unit and put back in raster
    order. `window_index` is that order, as the adapter gets it from the model.
    """
    queries, keys, scale = qwen_block_qk(tower, hidden_states, grid_thw, window_index, block)
    # A full-attention block attends within each image. An image's patches stay contiguous under the
    # window permutation.
    bounds = get_vision_cu_seqlens(grid_thw.to(keys.device)).tolist()
    received = torch.cat(
        [
            attention_received(queries[start:end].transpose(0, 1), keys[start:end].transpose(0, 1), scale)
            for start, end in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    )  # [patches], window order
    return per_merged_token(received, tower, window_index)


@torch.no_grad()
def qwen_block_keys(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    grid_thw: torch.Tensor,
    window_index: torch.Tensor,
    block: int,
) -> torch.Tensor:
    """Qwen2.5-VL's tower: [merged tokens, heads * d], the mean key of each merged token's patches at
    `block`, as the block's attention compares them (rotary angles applied)."""
    _, keys, _ = qwen_block_qk(tower, hidden_states, grid_thw, window_index, block)
    return per_merged_token(keys.flatten(1), tower, window_index)


def internvl_block_qk(
    tower: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...] | None, block: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """InternViT block `block`: queries and keys [tiles, heads, 1 + P, d] (class token first), after
    the block's `layernorm_before` and its optional query/key norms, and the scale."""
    layers = tower.encoder.layer
    index = block_index(block, len(layers))
    layer = layers[index]
    hidden = require_hidden_states(hidden_states)[index]  # [tiles, 1 + P, C], the block's input
    normed = layer.layernorm_before(hidden)
    attention = layer.attention
    tiles, length, _ = hidden.shape

    def split_heads(projected: torch.Tensor) -> torch.Tensor:  # [tiles, 1 + P, C] -> [tiles, heads, 1 + P, d]
        return projected.view(tiles, length, attention.num_heads, attention.head_dim).transpose(1, 2)

    queries = split_heads(attention.q_norm(attention.q_proj(normed)))
    keys = split_heads(attention.k_norm(attention.k_proj(normed)))
    return queries, keys, attention.scale


@torch.no_grad()
def internvl_block_attention(
    tower: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...] | None, block: int
) -> torch.Tensor:
    """InternViT: [tiles, 1 + P], the attention the class token gives each position at `block`."""
    queries, keys, scale = internvl_block_qk(tower, hidden_states, block)
    return torch.stack([attention_received(queries[t, :, :1], keys[t], scale) for t in range(len(keys))])


@torch.no_grad()
def internvl_block_keys(
    tower: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...] | None, block: int
) -> torch.Tensor:
    """InternViT: [tiles, 1 + P, heads * d], each position's attention key at `block`."""
    _, keys, _ = internvl_block_qk(tower, hidden_states, block)
    return keys.transpose(1, 2).flatten(2)


@torch.no_grad()
def pixtral_block_qk(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    patch_grids: list[tuple[int, int]],
    block: int,
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Pixtral block `block`: per image, queries and keys [heads, patches, d] with the 2-D rotary
    angles applied as the tower applies them (positions restart at each image), and the scale. The
    images are packed in one sequence; the tower's attention is block-diagonal, one block per image."""
    from transformers.models.pixtral.modeling_pixtral import apply_rotary_pos_emb

    layers = tower.transformer.layers
    index = block_index(block, len(layers))
    layer = layers[index]
    attention = layer.attention
    hidden = require_hidden_states(hidden_states)[index]  # [1, patches, C], every image packed
    normed = layer.attention_norm(hidden)
    length = hidden.shape[1]

    def split_heads(projected: torch.Tensor) -> torch.Tensor:  # [1, P, C] -> [1, heads, P, d]
        return projected.view(1, length, attention.num_heads, attention.head_dim).transpose(1, 2)

    positions = []
    for rows, cols in patch_grids:  # the tower's own (row, column) position of each patch
        row_ids, col_ids = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        positions.append(torch.stack([row_ids.flatten(), col_ids.flatten()], dim=-1))
    cos, sin = tower.patch_positional_embedding(hidden, torch.cat(positions).to(hidden.device))
    queries, keys = apply_rotary_pos_emb(
        split_heads(attention.q_proj(normed)),
        split_heads(attention.k_proj(normed)),
        cos,
        sin,
        unsqueeze_dim=0,
    )
    sizes = [rows * cols for rows, cols in patch_grids]
    return [
        (q, k, attention.scaling)
        for q, k in zip(queries[0].split(sizes, dim=1), keys[0].split(sizes, dim=1), strict=True)
    ]


@torch.no_grad()
def gemma4_block_qk(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    patch_grids: list[tuple[int, int]],
    block: int,
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Gemma 4's vision block `block`: per image, queries [heads, n, d] and keys [heads, n, d] of its n
    real patches (the padding after them left out, as the tower's mask leaves it out), after the
    block's norms and the 2-D rotary angles at the processor's (x, y) positions, and the scale."""
    from transformers.models.gemma4.modeling_gemma4 import apply_multidimensional_rope

    layers = tower.encoder.layers
    index = block_index(block, len(layers))
    layer = layers[index]
    attention = layer.self_attn
    hidden = require_hidden_states(hidden_states)[index]  # [N, max patches, C], padded
    images, length, _ = hidden.shape
    positions = torch.full((images, length, 2), -1, dtype=torch.long, device=hidden.device)
    for image, (rows, cols) in enumerate(patch_grids):  # (x, y), x fastest, as the processor writes them
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        positions[image, : rows * cols] = torch.stack([x.flatten(), y.flatten()], dim=-1).to(hidden.device)
    normed = layer.input_layernorm(hidden)
    cos, sin = tower.encoder.rotary_emb(normed, positions)
    shape = (images, length, -1, attention.head_dim)
    queries = apply_multidimensional_rope(
        attention.q_norm(attention.q_proj(normed).view(shape)), cos, sin, positions
    )
    keys = apply_multidimensional_rope(
        attention.k_norm(attention.k_proj(normed).view(shape)), cos, sin, positions
    )
    keys = keys.repeat_interleave(attention.num_key_value_groups, dim=2)  # grouped heads, as repeat_kv
    out = []
    for image, (rows, cols) in enumerate(patch_grids):
        real = rows * cols
        out.append(
            (queries[image, :real].transpose(0, 1), keys[image, :real].transpose(0, 1), attention.scaling)
        )
    return out


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
