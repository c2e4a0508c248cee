"""InternVL (`InternVLForConditionalGeneration`): tiles of one fixed size, pixel shuffle, a thumbnail.

The processor cuts an image into a grid of tiles at the tower's size (the grid whose aspect ratio
is closest to the image's, between `min_patches` and `max_patches` tiles; the image processor's
own `get_optimal_tiled_canvas`) and, when there is more than one tile, adds a thumbnail of the
whole image last. Each tile goes through InternViT (with a class token, dropped by strategy
"default"); the 32x32 patches are pixel-shuffled to 16x16 tokens, each holding a 2x2 patch block
in its channels (`downsample_ratio` 0.5), and projected by a norm and a two-layer MLP. The
processor writes `<img>`, `image_seq_length` `<IMG_CONTEXT>` per tile, `</img>`: one contiguous
run per image, tiles in raster order, the thumbnail's tokens last.

What is particular, and handled here:

- **The processor's own default wins over the checkpoint.** `InternVLProcessor` tiles with
  `crop_to_patches=True` by default whatever `preprocessor_config.json` says (the released files
  say false), so a count taken from the image processor's settings would be wrong. The layer
  passes the tiling settings to every processor call itself (`tiling`), so `geometry` and the
  processor cannot disagree, and the doctor states them.
- **The token grid is a mosaic.** Attention maps and masks live on the tiles put back together
  (rows x 16 by cols x 16 tokens); `grid_offsets` map each mosaic cell to its placeholder (tile by
  tile), and the thumbnail's tokens are content outside the mosaic.
- **Padding.** The processor pads on the left by its own default; the layer passes the
  tokenizer's `padding_side`, as it pads every family.
- `raw` holds the pixel-shuffled features the projector consumes (one row per token, four patches
  in its channels, from the same tower pass); tower scores and keys average each token's 2x2 patch
  block the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)

from visionloom.backbones.base import read_chat_template, read_json
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tiles import ShuffledTilesAdapter, side_of
from visionloom.backbones.tiny_parts import (
    LAYERS,
    build_tokenizer,
    narrow_text,
    preset,
    randomise_zero_init,
    tower_settings,
)
from visionloom.backbones.tower_attention import attention_received, block_index, require_hidden_states
from visionloom.backbones.types import ImageGeometry, MultimodalInputs, VisionTokens


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


def internvl_block_attention(
    tower: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...] | None, block: int
) -> torch.Tensor:
    """InternViT: [tiles, 1 + P], the attention the class token gives each position at `block`."""
    queries, keys, scale = internvl_block_qk(tower, hidden_states, block)
    return torch.stack([attention_received(queries[t, :, :1], keys[t], scale) for t in range(len(keys))])


def internvl_block_keys(
    tower: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...] | None, block: int
) -> torch.Tensor:
    """InternViT: [tiles, 1 + P, heads * d], each position's attention key at `block`."""
    _, keys, _ = internvl_block_qk(tower, hidden_states, block)
    return keys.transpose(1, 2).flatten(2)


class InternVLAdapter(ShuffledTilesAdapter):
    family = "internvl"
    model_types = ("internvl",)
    model_class = InternVLForConditionalGeneration
    marker = "<IMG_CONTEXT>"
    tile_setting = "size"
    count_setting = "image_seq_length"
    projector_steps = "pixel shuffle before it"
    processor_class = InternVLProcessor
    video_processor_source = ("internvl.video_processing_internvl", "InternVLVideoProcessor")

    @classmethod
    def load_processor(cls, path: Path, config: Any) -> InternVLProcessor:
        # AutoProcessor would also build the video processor, which needs torchvision (see _compat).
        processor_file = path / "processor_config.json"
        settings = read_json(processor_file) if processor_file.is_file() else {}
        return cls.build_processor(
            image_processor=GotOcr2ImageProcessorPil.from_pretrained(str(path)),
            tokenizer=AutoTokenizer.from_pretrained(str(path)),
            # The processor's own count (processor_config.json), checked against the tower in validate_config.
            image_seq_length=int(settings.get("image_seq_length", config.image_seq_length)),
            chat_template=read_chat_template(path),
        )

    # ------------------------------------------------------------------ config facts
    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def shuffle(self) -> int:
        """Patches per token side: 2 for downsample_ratio 0.5."""
        return round(1 / self.config.downsample_ratio)

    @property
    def tile_size(self) -> int:
        size = self.processor.image_processor.size
        if int(size.height) != int(size.width):
            raise ImageTokenMismatch(
                f"image processor size {size.height}x{size.width}: InternVL's tiles are square"
            )
        return int(size.height)

    def configured_image_size(self) -> tuple[int, int]:
        return self.tile_size, self.tile_size

    def tiling(self) -> dict[str, Any]:
        """The tiling every processor call gets: the processor's own default (crop_to_patches=True),
        the tile count bounds of the image processor."""
        image_processor = self.processor.image_processor
        return {
            "crop_to_patches": True,
            "min_patches": int(image_processor.min_patches),
            "max_patches": int(image_processor.max_patches),
        }

    def validate_config(self) -> None:
        if self.config.vision_feature_select_strategy != "default":
            raise ImageTokenMismatch(
                f"vision_feature_select_strategy={self.config.vision_feature_select_strategy!r}: InternViT has a "
                f"class token, and pixel shuffle needs the square {self.patch_side}x{self.patch_side} patch grid "
                f"without it; use 'default'"
            )
        self.check_tiles()

    # ------------------------------------------------------------------ geometry
    def tile_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of height x width, as the image processor picks them."""
        tiling = self.tiling()
        if tiling["max_patches"] <= 1:
            return 1, 1
        cols, rows = get_optimal_tiled_canvas(
            (height, width), (self.tile_size, self.tile_size), tiling["min_patches"], tiling["max_patches"]
        )
        return rows, cols

    def tile_layouts(self, input_ids: torch.Tensor) -> list[tuple[int, int]]:
        """Each image's placeholders are one run between <img> and </img>: its length gives the tile
        count, and the tile grid follows where the count allows one grid only."""
        tiling, per_tile = self.tiling(), self.token_side**2
        layouts = []
        for sample, ids in enumerate(input_ids):
            positions = (ids == self.image_token_id).nonzero().flatten()
            breaks = (positions.diff() != 1).nonzero().flatten() + 1
            for run in positions.tensor_split(breaks.cpu()) if len(positions) else []:
                tiles = len(run) // per_tile
                if tiles * per_tile != len(run):
                    raise ImageTokenMismatch(
                        f"sample {sample}: an image has {len(run)} placeholders, not a whole number of "
                        f"tiles of {per_tile}"
                    )
                if tiles == 1:
                    layouts.append((1, 1))
                    continue
                grids = [
                    (rows, (tiles - 1) // rows)
                    for rows in range(1, tiles)
                    if (tiles - 1) % rows == 0 and tiling["min_patches"] <= tiles - 1 <= tiling["max_patches"]
                ]
                if len(grids) != 1:
                    shown = " or ".join(f"{rows}x{cols}" for rows, cols in grids) or "no grid"
                    raise ValueError(
                        f"sample {sample}: an image cut into {tiles - 1} tiles (+ the whole image) could be "
                        f"laid out as {shown}; the processed outputs do not say which: pass "
                        f"image_sizes=[(height, width), ...] (each image's own size, batch order)"
                    )
                layouts.append(grids[0])
        return layouts

    def tiles(self, geometries) -> list[int]:
        return [g.num_tokens // self.token_side**2 for g in geometries]

    def _process(self, texts, images, geometries) -> dict:
        # InternVLProcessor pads on the left whatever the tokenizer says; the layer pads where the
        # tokenizer does, as for every family (pruning and generation handle both sides).
        return super()._process(
            texts, images, geometries, padding_side=self.tokenizer.padding_side, **self.tiling()
        )

    def image_span_ids(self, geometry: ImageGeometry) -> list[int]:
        start = self.tokenizer.convert_tokens_to_ids(self.processor.start_image_token)
        end = self.tokenizer.convert_tokens_to_ids(self.processor.end_image_token)
        return [start] + [self.image_token_id] * geometry.num_tokens + [end]

    # ------------------------------------------------------------------ vision
    def encode_images(self, inputs: MultimodalInputs) -> VisionTokens:
        out = self.model.model.get_image_features(
            pixel_values=inputs.model_inputs["pixel_values"],
            vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
            output_hidden_states=True,
            return_dict=True,
        )
        embeds = out.pooler_output  # [tiles, tokens per tile, D_text]
        raw = self.shuffled_features(out)  # [tiles, tokens per tile, 4 C_vision]
        tiles = self.tiles(inputs.geometries)
        return VisionTokens(
            embeds=embeds.flatten(0, 1),
            raw=raw.flatten(0, 1),
            counts=[g.num_tokens for g in inputs.geometries],
            raw_counts=[g.num_tokens for g in inputs.geometries],
            geometries=list(inputs.geometries),
            feature_source=f"every tile ({sum(tiles)} in all): {self.feature_layer_name()}, CLS dropped, "
            f"pixel-shuffled {self.shuffle}x{self.shuffle}",
            tower_hidden_states=tuple(out.hidden_states),
        )

    def feature_layer_name(self) -> str:
        layer = self.config.vision_feature_layer
        return "last_hidden_state" if layer == -1 else f"hidden_states[{layer}]"

    def shuffled_features(self, out: Any) -> torch.Tensor:
        """[tiles, tokens, 4C]: the tower's selected features, class token dropped and pixel-shuffled
        by the model's own `pixel_shuffle`, as `get_image_features` feeds its projector."""
        layer = self.config.vision_feature_layer
        features = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        features = features[:, 1:]  # strategy "default" (validate_config)
        grid = features.reshape(features.shape[0], self.patch_side, self.patch_side, -1)
        shuffled = self.model.model.pixel_shuffle(grid, scale_factor=self.config.downsample_ratio)
        return shuffled.reshape(features.shape[0], -1, shuffled.shape[-1])

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """The attention the class token gives each patch (VisionZip's choice for towers with one),
        averaged over each token's 2x2 patch block; the thumbnail's tokens included."""
        block = -1 if block is None else block
        per_patch = internvl_block_attention(self.vision_tower, tokens.tower_hidden_states, block)[:, 1:]
        return self.per_token(per_patch, tokens)

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        block = -1 if block is None else block
        per_patch = internvl_block_keys(self.vision_tower, tokens.tower_hidden_states, block)[:, 1:]
        return self.per_token(per_patch, tokens)

    def describe_vision(self) -> dict[str, str]:
        vision, tiling = self.config.vision_config, self.tiling()
        size = self.configured_image_size()
        return {
            "vision tower": f"InternViT ({vision.num_hidden_layers} layers, class token)",
            "patch size": str(side_of(vision.patch_size)),
            "pooling / merge": f"pixel shuffle {self.shuffle}x{self.shuffle} -> {self.token_side}x{self.token_side} "
            "tokens per tile, LayerNorm + MLP projector",
            "CLS policy": f"dropped (strategy {self.config.vision_feature_select_strategy!r})",
            "feature layer(s)": self.feature_layer_name(),
            "image size": f"{size[0]}x{size[1]} tiles, {tiling['min_patches']}..{tiling['max_patches']} of them "
            "+ a thumbnail (crop_to_patches=True, the processor's default, passed on every call)",
        }


@preset("tiny-internvl")
def tiny_internvl(text_layers: int = LAYERS, **config_overrides: Any) -> InternVLAdapter:
    """InternVL shape: InternViT 112-px tiles (patch 14: 8x8 patches, pixel-shuffled to 4x4 = 16
    tokens), 1..4 tiles and a thumbnail, a Qwen2 language model (as InternVL3)."""
    tokenizer = build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
    )
    config = InternVLConfig(
        vision_config=tower_settings(image_size=[112, 112], patch_size=[14, 14]),
        text_config=narrow_text(
            len(tokenizer), text_layers, model_type="qwen2", pad_token_id=tokenizer.pad_token_id
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=16,
        **config_overrides,
    )
    model = InternVLAdapter.model_class(config).eval()
    randomise_zero_init(model)
    # As released: the image processor's file says crop_to_patches false (the processor tiles anyway).
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 112, "width": 112}, crop_to_patches=False, min_patches=1, max_patches=4
    )
    processor = InternVLAdapter.build_processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=config.image_seq_length
    )
    return InternVLAdapter(model, processor)
