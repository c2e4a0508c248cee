"""Layout helpers for the families that cut an image into equal tiles and pixel-shuffle each tile's
patches (InternVL, SmolVLM): where each cell of the tile mosaic sits among an image's
placeholders, and a per-patch quantity averaged onto the shuffled tokens."""

from __future__ import annotations

import torch


def mosaic_offsets(rows: int, cols: int, side: int) -> tuple[int, ...]:
    """Placeholder index of each cell of a rows x cols mosaic of side x side-token tiles, in the
    mosaic's raster order, when the placeholders go tile by tile (raster tile order), each tile's
    tokens in raster order."""
    per_tile = side * side
    return tuple(
        ((r // side) * cols + c // side) * per_tile + (r % side) * side + c % side
        for r in range(rows * side)
        for c in range(cols * side)
    )


def shuffled_block_mean(per_patch: torch.Tensor, token_side: int, block: int) -> torch.Tensor:
    """[tiles, patches, ...] (each tile's patches in raster order) -> [tiles * tokens, ...]: the mean
    over the block x block patches that pixel shuffle puts into each token (token (i, j) holds
    patches (block * i + a, block * j + b)), tokens in raster order, tile by tile."""
    tiles = per_patch.shape[0]
    grid = per_patch.reshape(tiles, token_side, block, token_side, block, *per_patch.shape[2:])
    return grid.mean((2, 4)).reshape(tiles * token_side * token_side, *per_patch.shape[2:])
