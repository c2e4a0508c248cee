"""Families whose tower runs at one fixed size and turns every patch into one token (DeepSeek-VL, PaliGemma).

A SigLIP tower (no CLS), no pooling or merge: the last hidden state's patches, projected, are the
image tokens, `(image_size / patch_size)^2` of them. The processor writes a fixed count per image,
which must equal that. A family module says where its tower is, which processor setting holds the
count, and what its projector is; everything else lives here.
"""

from __future__ import annotations

import operator
from typing import ClassVar

import torch

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tower_attention import encoder_block_attention, encoder_block_keys
from visionloom.backbones.types import ImageGeometry, MultimodalInputs, VisionTokens


class PatchTokenAdapter(ImageTokenAdapter):
    vision_tower_path: ClassVar[str]  # the tower's attribute path from the transformers model
    count_setting: ClassVar[str]  # the processor attribute holding the placeholders per image
    projection_description: ClassVar[str]  # the projector, for the doctor

    @property
    def vision_tower(self) -> torch.nn.Module:
        return operator.attrgetter(self.vision_tower_path)(self.model)

    @property
    def vision_width(self) -> int:
        return int(self.config.vision_config.hidden_size)

    @property
    def side(self) -> int:
        vision = self.config.vision_config
        return vision.image_size // vision.patch_size

    def configured_image_size(self) -> tuple[int, int]:
        size = self.config.vision_config.image_size
        return size, size

    def validate_config(self) -> None:
        written, produced = int(getattr(self.processor, self.count_setting)), self.side * self.side
        if written != produced:
            vision = self.config.vision_config
            raise ImageTokenMismatch(
                f"processor {self.count_setting}={written} placeholders per image but the tower gives {produced} patches "
                f"({vision.image_size}px / patch {vision.patch_size} = {self.side}, squared); "
                f"set {self.count_setting}={produced}"
            )

    def geometry(self, height: int, width: int) -> ImageGeometry:
        size = self.config.vision_config.image_size
        if self.native_resolution and (height, width) != (size, size):
            raise ImageTokenMismatch(
                f"{height}x{width} does not fit: the {self.family} tower runs at {size}x{size} only; "
                f"sizes that work: {size}x{size}"
            )
        return ImageGeometry(
            image_size=(height, width),
            pixel_size=(size, size),
            patch_grid=(self.side, self.side),
            token_grid=(self.side, self.side),
            num_tokens=self.side * self.side,
        )

    def encode_images(self, inputs: MultimodalInputs) -> VisionTokens:
        out = self.model.model.get_image_features(
            pixel_values=inputs.model_inputs["pixel_values"], output_hidden_states=True, return_dict=True
        )
        embeds, raw = out.pooler_output, out.last_hidden_state  # [N, P, D_text], [N, P, C_vision]
        return VisionTokens(
            embeds=embeds.flatten(0, 1),
            raw=raw.flatten(0, 1),
            counts=[embeds.shape[1]] * embeds.shape[0],
            raw_counts=[raw.shape[1]] * raw.shape[0],
            geometries=list(inputs.geometries),
            feature_source="last_hidden_state (after post_layernorm), every patch",
            tower_hidden_states=tuple(out.hidden_states) if out.hidden_states is not None else None,
        )

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """Mean received attention per patch (SigLIP has no class token); one patch is one token."""
        block = -1 if block is None else block  # the last block's output feeds the projector
        return list(encoder_block_attention(self.vision_tower, tokens.tower_hidden_states, block, "all"))

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        block = -1 if block is None else block
        return list(encoder_block_keys(self.vision_tower, tokens.tower_hidden_states, block))

    def describe_vision(self) -> dict[str, str]:
        vision, size = self.config.vision_config, self.configured_image_size()
        return {
            "vision tower": f"{vision.model_type} ({vision.num_hidden_layers} layers)",
            "patch size": str(vision.patch_size),
            "pooling / merge": self.projection_description,
            "CLS policy": "no CLS",
            "feature layer(s)": "last_hidden_state (after post_layernorm)",
            "image size": f"{size[0]}x{size[1]}"
            + (" native" if self.native_resolution else " (processor resizes)"),
        }
