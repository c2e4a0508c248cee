"""SmolVLM (`SmolVLMForConditionalGeneration`): image splitting with row/column text markers, pixel shuffle.

The image processor shrinks an image until its longer side fits `size["longest_edge"]`, then
(with `do_image_splitting`) scales it up to whole tiles of `max_image_size["longest_edge"]`, the
tower's size, cuts it into rows x cols tiles and adds the whole image at the tile size last (the
"global" image); an image that fits in one tile is not split. Each tile goes through the SigLIP
tower (no class token); the connector pixel-shuffles its patches (`scale_factor`: each token holds
a scale x scale patch block in its channels) and projects them with one linear layer.

The processor writes, per tile, `<fake_token_around_image><row_r_col_c>` then `image_seq_len`
`<image>`, a newline after each row of tiles, and `<fake_token_around_image><global-img>` before
the global image's tokens. The markers are text: an image's placeholders come in one run per tile
with text between (`placeholder_runs`), and pruning never drops a marker. The token grid is the
mosaic of the tiles (as InternVL's); the global image's tokens are content outside it.

Traps closed here: the processor's `image_seq_len` must be the tower's token count per tile (the
processor does not check it); `geometry` follows the image processor's own resizing step by step
(the count the processor writes comes from the tiles it actually cut). The model drops tiles whose
pixels are all exactly zero as batch padding; normalised uint8 images with the released mean and
std never are.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor
from transformers.models.smolvlm.image_processing_pil_smolvlm import (
    SmolVLMImageProcessorPil,
    get_resize_output_image_size,
)
from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

from visionloom.backbones.base import read_chat_template, read_json
from visionloom.backbones.tiles import ShuffledTilesAdapter
from visionloom.backbones.tiny_parts import LAYERS, build_tokenizer, llama_text, preset, siglip_tower
from visionloom.backbones.tower_attention import encoder_block_attention, encoder_block_keys
from visionloom.backbones.types import ImageGeometry, MultimodalInputs, VisionTokens


class SmolVLMAdapter(ShuffledTilesAdapter):
    family = "smolvlm"
    model_types = ("smolvlm",)
    model_class = SmolVLMForConditionalGeneration
    marker = "<image>"
    tile_setting = "max_image_size longest_edge"
    count_setting = "image_seq_len"
    nested_images = True  # the processor counts images per sample
    projector_path = "model.connector"
    processor_class = SmolVLMProcessor
    video_processor_source = ("smolvlm.video_processing_smolvlm", "SmolVLMVideoProcessor")
    projector_steps = "pixel shuffle, then modality_projection"

    @classmethod
    def load_processor(cls, path: Path, config: Any) -> SmolVLMProcessor:
        # AutoProcessor would also build the video processor, which needs torchvision (see _compat).
        processor_file = path / "processor_config.json"
        settings = read_json(processor_file) if processor_file.is_file() else {}
        if "image_seq_len" not in settings:
            raise ValueError(
                f"{processor_file}: no image_seq_len; the processor would write its default 169 placeholders per tile"
            )
        return cls.build_processor(
            image_processor=SmolVLMImageProcessorPil.from_pretrained(str(path)),
            tokenizer=AutoTokenizer.from_pretrained(str(path)),
            image_seq_len=int(settings["image_seq_len"]),
            chat_template=read_chat_template(path),
        )

    # ------------------------------------------------------------------ config facts
    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_model

    @property
    def language_module(self) -> torch.nn.Module:
        return self.model.model.text_model

    @property
    def shuffle(self) -> int:
        return int(self.config.scale_factor)

    @property
    def tile_size(self) -> int:
        return int(self.processor.image_processor.max_image_size["longest_edge"])

    def configured_image_size(self) -> tuple[int, int]:
        edge = int(self.processor.image_processor.size["longest_edge"])
        return edge, edge

    def validate_config(self) -> None:
        self.check_tiles()

    # ------------------------------------------------------------------ geometry
    def tile_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of height x width, (0, 0) when it is not split: the
        image processor's steps (`resize`, `resize_for_vision_encoder`, `split_images`) on sizes."""
        image_processor = self.processor.image_processor
        if not image_processor.do_image_splitting:
            return 0, 0
        if image_processor.do_resize:
            height, width = get_resize_output_image_size(
                np.empty((3, height, width), dtype=np.uint8),
                resolution_max_side=int(image_processor.size["longest_edge"]),
            )
        tile, aspect_ratio = self.tile_size, width / height
        # resize_for_vision_encoder, on the size alone
        if width >= height:
            width = math.ceil(width / tile) * tile
            height = math.ceil(int(width / aspect_ratio) / tile) * tile
        else:
            height = math.ceil(height / tile) * tile
            width = math.ceil(int(height * aspect_ratio) / tile) * tile
        if height > tile or width > tile:  # split_images
            return (height - tile) // tile + 1, (width - tile) // tile + 1
        return 0, 0

    def placeholder_runs(self, geometry: ImageGeometry) -> list[int]:
        per_tile = self.token_side**2
        return [per_tile] * (geometry.num_tokens // per_tile)  # markers before each tile

    def image_span_ids(self, geometry: ImageGeometry) -> list[int]:
        """The processor's own text for the image, tokenized: markers, newlines and placeholders."""
        rows, cols = self.tile_layout(geometry)
        text = get_image_prompt_string(
            rows,
            cols,
            self.processor.image_seq_len,
            fake_token_around_image=self.processor.fake_image_token,
            image_token=self.processor.image_token,
            global_image_token=self.processor.global_image_token,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tile_layouts(self, input_ids: torch.Tensor) -> list[tuple[int, int]]:
        """From the markers the processor wrote: `<row_r_col_c>` before each tile, `<global-img>`
        before an image's last (or only) tile."""
        marker = re.compile(r"<row_(\d+)_col_(\d+)>")
        global_token = self.processor.global_image_token
        layouts = []
        for ids in input_ids:
            rows = cols = 0
            for token in self.tokenizer.convert_ids_to_tokens(ids.tolist()):
                found = marker.fullmatch(token)
                if found:
                    rows, cols = max(rows, int(found[1])), max(cols, int(found[2]))
                elif token == global_token:
                    layouts.append((rows, cols))
                    rows = cols = 0
        return layouts

    # ------------------------------------------------------------------ vision
    def encode_images(self, inputs: MultimodalInputs) -> VisionTokens:
        out = self.model.model.get_image_features(
            pixel_values=inputs.model_inputs["pixel_values"],
            pixel_attention_mask=inputs.model_inputs.get("pixel_attention_mask"),
            output_hidden_states=True,
            return_dict=True,
        )
        embeds = torch.cat(list(out.pooler_output), dim=0)  # [T, D_text], sample by sample, tile by tile
        raw = self.model.model.connector.pixel_shuffle(
            out.last_hidden_state, self.shuffle
        )  # [tiles, tokens, C s^2]
        counts = [g.num_tokens for g in inputs.geometries]
        return VisionTokens(
            embeds=embeds,
            raw=raw.flatten(0, 1),
            counts=counts,
            raw_counts=counts,
            geometries=list(inputs.geometries),
            feature_source=f"last_hidden_state (after post_layernorm), every tile, pixel-shuffled {self.shuffle}x{self.shuffle}",
            tower_hidden_states=tuple(out.hidden_states),
        )

    def project(self, raw: torch.Tensor, geometries) -> torch.Tensor:
        return self.projector.modality_projection(raw)

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """Mean attention each patch receives (SigLIP has no class token), averaged over each token's
        patch block; the global image's tokens included."""
        block = -1 if block is None else block
        per_patch = encoder_block_attention(self.vision_tower, tokens.tower_hidden_states, block, "all")
        return self.per_token(per_patch, tokens)

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        block = -1 if block is None else block
        per_patch = encoder_block_keys(self.vision_tower, tokens.tower_hidden_states, block)
        return self.per_token(per_patch, tokens)

    def describe_vision(self) -> dict[str, str]:
        vision, image_processor = self.config.vision_config, self.processor.image_processor
        return {
            "vision tower": f"SigLIP ({vision.num_hidden_layers} layers)",
            "patch size": str(vision.patch_size),
            "pooling / merge": f"pixel shuffle {self.shuffle}x{self.shuffle} -> {self.token_side}x{self.token_side} "
            "tokens per tile, linear projection; <row_r_col_c> markers before each tile",
            "CLS policy": "no CLS",
            "feature layer(s)": "last_hidden_state (after post_layernorm)",
            "image size": f"longest side up to {image_processor.size['longest_edge']}, {self.tile_size}-px tiles "
            + ("+ the global image" if image_processor.do_image_splitting else "(no splitting)"),
        }


@preset("tiny-smolvlm")
def tiny_smolvlm(text_layers: int = LAYERS, **config_overrides: Any) -> SmolVLMAdapter:
    """SmolVLM shape: SigLIP 112-px tiles (patch 14: 8x8 patches, pixel-shuffled 2x2 to 16 tokens),
    the longer side scaled to 336 px (up to 3x3 tiles) plus the global image, <row_r_col_c> markers."""
    markers = [f"<row_{row}_col_{col}>" for row in range(1, 4) for col in range(1, 4)]
    tokenizer = build_tokenizer(
        [
            "<unk>",
            "<|im_start|>",
            "<end_of_utterance>",
            "<pad>",
            "<image>",
            "<fake_token_around_image>",
            "<global-img>",
        ]
        + markers,
        {
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = SmolVLMConfig(
        vision_config=siglip_tower(112).to_dict(),
        text_config=llama_text(len(tokenizer), text_layers, pad_token_id=tokenizer.pad_token_id).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        **config_overrides,
    )
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": 336}, max_image_size={"longest_edge": 112}, do_image_splitting=True
    )
    processor = SmolVLMAdapter.build_processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=16
    )
    return SmolVLMAdapter(SmolVLMAdapter.model_class(config).eval(), processor)
