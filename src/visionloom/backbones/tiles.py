"""The base for families that cut an image into tiles at the tower's size and pixel-shuffle each
tile's patches (InternVL, SmolVLM).

Every tile is a square of the tower's size; its side x side patches are pixel-shuffled into
(side / s) x (side / s) tokens, token (i, j) holding patches (s i + a, s j + b) in its channels.
An image cut into rows x cols tiles (more than one) also gets one whole-image tile after them (a
thumbnail, a global image); its token grid is the mosaic of the tiles, whose cells map to the
placeholders tile by tile, and the extra tile's tokens are content outside the mosaic. A family
module says how many tiles its processor cuts, where the processor keeps the tile size and the
count per tile, and the shuffle factor.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tower_attention import block_mean
from visionloom.backbones.types import ImageGeometry, VisionTokens


def side_of(value: int | list[int] | tuple[int, ...]) -> int:
    """A square config size given as one int or a pair (InternVL writes [448, 448])."""
    return int(value) if isinstance(value, int) else int(value[0])


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


class ShuffledTilesAdapter(ImageTokenAdapter):
    supports_native_resolution = False  # the processor's tiling is the family's resolution policy
    tile_setting: ClassVar[str]  # the processor setting that holds the tile size (for messages)
    count_setting: ClassVar[str]  # the processor attribute that holds the placeholders per tile

    @property
    def shuffle(self) -> int:
        """Patches per token side."""
        raise NotImplementedError

    @property
    def tile_size(self) -> int:
        """The side of the tiles the processor cuts."""
        raise NotImplementedError

    def tile_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles the processor cuts an image of height x width into; 1 x 1 (or 0 x 0)
        when it is not cut."""
        raise NotImplementedError

    @property
    def vision_width(self) -> int:
        return int(self.config.vision_config.hidden_size) * self.shuffle**2  # the shuffled channels

    @property
    def patch_side(self) -> int:
        vision = self.config.vision_config
        return side_of(vision.image_size) // side_of(vision.patch_size)

    @property
    def token_side(self) -> int:
        return self.patch_side // self.shuffle

    def check_tiles(self) -> None:
        """The processor's tiles are the tower's size, and it writes the tower's count per tile."""
        tower_size = side_of(self.config.vision_config.image_size)
        if self.tile_size != tower_size:
            raise ImageTokenMismatch(
                f"image processor {self.tile_setting}={self.tile_size} but the tower's image_size is {tower_size}: "
                f"every tile must be the tower's size; set it to {tower_size} in the image processor's settings"
            )
        written, produced = int(getattr(self.processor, self.count_setting)), self.token_side**2
        if written != produced:
            raise ImageTokenMismatch(
                f"processor {self.count_setting}={written} placeholders per tile but the tower gives {produced} "
                f"tokens ({self.patch_side}x{self.patch_side} patches, pixel shuffle {self.shuffle}x{self.shuffle}); "
                f"set {self.count_setting}={produced} in processor_config.json"
            )

    def geometry(self, height: int, width: int) -> ImageGeometry:
        rows, cols = self.tile_grid(height, width)
        return self.layout_geometry(rows, cols, (height, width))

    def layout_geometry(self, rows: int, cols: int, image_size: tuple[int, int]) -> ImageGeometry:
        """The geometry of an image cut into rows x cols tiles (plus the whole-image tile when more than one)."""
        height, width = image_size
        side = self.token_side
        mosaic = rows * cols > 1  # and then one whole-image tile after the others
        return ImageGeometry(
            image_size=(height, width),
            pixel_size=(self.tile_size, self.tile_size),
            patch_grid=(self.patch_side, self.patch_side),
            token_grid=(rows * side, cols * side) if mosaic else (side, side),
            num_tokens=(rows * cols + 1 if mosaic else 1) * side * side,
            grid_offsets=mosaic_offsets(rows, cols, side) if mosaic else None,
        )

    def tile_layouts(self, input_ids: torch.Tensor) -> list[tuple[int, int]]:
        """(rows, cols) of tiles per image, batch order, read from processed ids (families override)."""
        raise NotImplementedError

    def geometries_from_processed(self, input_ids, model_inputs, image_sizes=None) -> list[ImageGeometry]:
        if image_sizes is not None:
            return super().geometries_from_processed(input_ids, model_inputs, image_sizes)
        # The tiles' own size stands for the image's, which the processed outputs do not keep.
        return [
            self.layout_geometry(rows, cols, (self.tile_size, self.tile_size))
            for rows, cols in self.tile_layouts(input_ids)
        ]

    def tile_layout(self, geometry: ImageGeometry) -> tuple[int, int]:
        """(rows, cols) of a geometry's mosaic, (0, 0) for an image that is one tile."""
        if geometry.grid_offsets is None:
            return 0, 0
        rows, cols = geometry.token_grid
        return rows // self.token_side, cols // self.token_side

    def per_token(self, per_patch: torch.Tensor, tokens: VisionTokens) -> list[torch.Tensor]:
        """[all tiles, patches, ...] -> per image [counts_i, ...]: each token's shuffled patch block
        averaged, tile by tile."""
        side = self.token_side
        per_tile = [block_mean(tile, side, side, self.shuffle) for tile in per_patch]
        return list(torch.cat(per_tile).split(tokens.counts))
