"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): any-res tiles, unpadding, image-newline tokens.

An image becomes a base view (the whole image at the tower's size) followed by the tiles of the
best-fitting grid resolution, stitched into one feature map, cropped back to the image's aspect
ratio ("unpad") and written row by row with a learned newline token after each row. The token
grid used for attention maps is that unpadded high-resolution map; `grid_offsets` skip the base
view and the newlines.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.llava import LlavaAdapter, feature_source, select_features, tower_has_cls
from visionloom.backbones.tiny_parts import LAYERS, clip_tower, llama_text, llava_tokenizer, preset
from visionloom.backbones.types import ImageGeometry, VisionTokens


def unpadded_grid(height: int, width: int, grid_rows: int, grid_cols: int) -> tuple[int, int]:
    """The feature-map size left after LLaVA-NeXT's `unpad_image` for an image of height x width."""
    if width / height > grid_cols / grid_rows:
        new_rows = int(round(height * (grid_cols / width), 7))
        padding = (grid_rows - new_rows) // 2
        return grid_rows - 2 * padding, grid_cols
    new_cols = int(round(width * (grid_rows / height), 7))
    padding = (grid_cols - new_cols) // 2
    return grid_rows, grid_cols - 2 * padding


class LlavaNextAdapter(LlavaAdapter):
    family = "llava-next"
    model_types = ("llava_next",)
    model_class = LlavaNextForConditionalGeneration
    supports_native_resolution = False

    def validate_config(self) -> None:
        self.check_tiles()
        super().validate_config()

    def check_tiles(self) -> None:
        """The tower's strategy gives square tiles, and processor and model tile alike."""
        config, vision = self.config, self.config.vision_config
        strategy = config.vision_feature_select_strategy
        if tower_has_cls(vision) != (strategy == "default"):
            raise ImageTokenMismatch(
                f"LLaVA-NeXT reshapes each tile's features to a {vision.image_size // vision.patch_size}-square grid: "
                f"strategy {strategy!r} with a {vision.model_type} tower "
                f"({'with' if tower_has_cls(vision) else 'without'} CLS) leaves a token count that is not that square"
            )
        processor_grid = [list(p) for p in self.processor.image_processor.image_grid_pinpoints]
        model_grid = [list(p) for p in config.image_grid_pinpoints]
        if processor_grid != model_grid:
            raise ImageTokenMismatch(
                f"image_grid_pinpoints differ: the image processor tiles by {processor_grid} "
                f"(preprocessor_config.json) but the model unpads by {model_grid} (config.json), so tiles "
                f"and placeholders would not line up. Use the same list in both files."
            )

    def geometry(self, height: int, width: int) -> ImageGeometry:
        vision = self.config.vision_config
        size, side = vision.image_size, vision.image_size // vision.patch_size
        rows, cols = self.packed_grid(height, width)
        base = self._tokens_from_tower()  # the base view, CLS policy applied
        count = base + rows * (cols + 1)  # one newline token closes each row
        offsets = tuple(base + r * (cols + 1) + c for r in range(rows) for c in range(cols))
        return ImageGeometry(
            image_size=(height, width),
            pixel_size=(size, size),
            patch_grid=(side, side),
            token_grid=(rows, cols),
            num_tokens=count,
            grid_offsets=offsets,
        )

    def geometries_from_processed(self, input_ids, model_inputs, image_sizes=None) -> list[ImageGeometry]:
        sizes = model_inputs["image_sizes"] if image_sizes is None else image_sizes  # each image's own size
        return [self.geometry(int(height), int(width)) for height, width in sizes]

    def packed_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the stitched, unpadded tile features of an image of height x width."""
        vision = self.config.vision_config
        size, side = vision.image_size, vision.image_size // vision.patch_size
        best_h, best_w = select_best_resolution((height, width), self.config.image_grid_pinpoints)
        return unpadded_grid(height, width, best_h // size * side, best_w // size * side)

    def structural_offsets(self, geometry: ImageGeometry) -> tuple[int, ...]:
        rows, cols = geometry.token_grid
        base = geometry.num_tokens - rows * (cols + 1)
        return tuple(base + r * (cols + 1) + cols for r in range(rows))  # the newline closing each row

    def encode_images(self, inputs) -> VisionTokens:
        image_sizes = inputs.model_inputs["image_sizes"]
        out = self.model.model.get_image_features(
            pixel_values=inputs.model_inputs["pixel_values"],
            image_sizes=image_sizes,
            output_hidden_states=True,
            return_dict=True,
        )
        pooled = out.pooler_output  # per image [counts_i, D_text] (OneVision: one tensor of all)
        embeds = torch.cat(list(pooled), dim=0) if isinstance(pooled, (list, tuple)) else pooled
        raw = select_features(out.hidden_states, self.config)  # [all tiles, P', C_vision]
        tiles = self.tiles(inputs.geometries)
        return VisionTokens(
            embeds=embeds,
            raw=raw.flatten(0, 1),
            counts=[g.num_tokens for g in inputs.geometries],
            raw_counts=[t * raw.shape[1] for t in tiles],
            geometries=list(inputs.geometries),
            feature_source=f"every tile: {feature_source(self.config)}",
            tower_hidden_states=tuple(out.hidden_states),
        )

    def tiles(self, geometries) -> list[int]:
        """Tower tiles per image (the base view and the any-res tiles), from each image's size."""
        size = self.config.vision_config.image_size
        return [
            image_size_to_num_patches(list(g.image_size), self.config.image_grid_pinpoints, size)
            for g in geometries
        ]

    def project(self, raw: torch.Tensor, geometries) -> torch.Tensor:
        """Every tile's raw features projected, then packed as the model packs them (base view,
        stitched and unpadded tiles, a newline closing each row)."""
        tiles = self.tiles(geometries)
        per_tile = raw.view(sum(tiles), -1, raw.shape[-1])  # [tiles, P', C], as the model projects
        projected = self.projector(per_tile)  # [tiles, P', D]
        return torch.cat(self.pack(list(projected.split(tiles)), geometries, self.model.model.image_newline))

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """Per-tile scores laid out like the features: base view, stitched and unpadded tiles, newlines.

        The newlines get NaN because they are layout and never candidates.
        """
        per_tile = self.tile_attention_scores(tokens, block).unsqueeze(-1)  # [all tiles, P', 1]
        return [scores.squeeze(-1) for scores in self.packed(tokens, per_tile)]

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        return self.packed(tokens, self.tile_keys(tokens, block))

    def packed(self, tokens: VisionTokens, per_tile: torch.Tensor) -> list[torch.Tensor]:
        """[all tiles, P', C] -> per image [counts_i, C], laid out by the model's own
        `pack_image_features` (tiles stitched, unpadded, a NaN row at each newline)."""
        tiles = [raw_count // per_tile.shape[1] for raw_count in tokens.raw_counts]
        newline = torch.full((per_tile.shape[-1],), float("nan"))
        return self.pack(list(per_tile.split(tiles)), tokens.geometries, newline)

    def pack(self, per_image: list[torch.Tensor], geometries, newline: torch.Tensor) -> list[torch.Tensor]:
        """Per image [tiles, P', C] -> per image [counts_i, C]: the model's own `pack_image_features`."""
        packed, lengths = self.model.model.pack_image_features(
            per_image,
            image_sizes=torch.tensor([g.image_size for g in geometries]),
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
            image_newline=newline,
        )
        return list(packed) if isinstance(packed, (list, tuple)) else list(packed.split(lengths))

    def describe_vision(self) -> dict[str, str]:
        info = super().describe_vision()
        info["pooling / merge"] = f"any-res tiles {self.config.image_grid_pinpoints}, unpad, newline per row"
        info["image size"] = "any (tiled)"
        return info


@preset("tiny-llava-next")
def tiny_llava_next(text_layers: int = LAYERS, **config_overrides: Any) -> LlavaNextAdapter:
    """LLaVA-NeXT shape: 56-px tiles (4x4 tokens each), any-res grids up to 112x112."""
    tokenizer = llava_tokenizer()
    pinpoints = [[56, 112], [112, 56], [112, 112]]
    config = LlavaNextConfig(
        vision_config=clip_tower(56),
        text_config=llama_text(len(tokenizer), text_layers, pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        **config_overrides,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaNextAdapter(LlavaNextAdapter.model_class(config).eval(), processor)
