"""PaliGemma (`PaliGemmaForConditionalGeneration`): SigLIP, one linear projection, a prefix-LM.

The processor writes `image_seq_length` `<image>` tokens (the tower's patch grid, no CLS, no
pooling), then `<bos>` after the last image token and a newline after the prompt. What is
particular:

- **The prefix is bidirectional.** `token_type_ids` 0 marks the prefix (image and prompt), which
  attends both ways in the first forward; 1 marks the suffix (answers), which is causal. Prompts
  here carry no suffix, so every token is prefix; the layer passes these ids itself, computed on
  the full sequence and gathered with everything else when tokens are pruned.
- **Positions start at 1.** The model numbers its tokens 1..S (and `generate` the same, one more
  than the usual count), so `position_offset` is 1 wherever the layer computes positions.
- The image token's id may lie outside the language model's vocabulary, as in Gemma 3; it is
  mapped to 0 before the embedding, as the model does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import PaliGemmaForConditionalGeneration

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tower_attention import encoder_block_attention, encoder_block_keys
from visionloom.backbones.types import ImageGeometry, MultimodalInputs, VisionTokens


class PaliGemmaAdapter(ImageTokenAdapter):
    family = "paligemma"
    model_types = ("paligemma",)
    model_class = PaliGemmaForConditionalGeneration
    marker = "<image>"
    supports_native_resolution = False
    position_offset: ClassVar[int] = 1

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

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
        written = int(self.processor.image_seq_length)
        if written != self.side**2:
            vision = self.config.vision_config
            raise ImageTokenMismatch(
                f"the processor writes image_seq_length={written} placeholders per image but the tower gives "
                f"{self.side**2} features ({vision.image_size}px / patch {vision.patch_size} = {self.side}, squared): "
                f"set image_seq_length to {self.side**2} in the processor's config"
            )

    def geometry(self, height: int, width: int) -> ImageGeometry:
        size = self.config.vision_config.image_size
        return ImageGeometry(
            image_size=(height, width),
            pixel_size=(size, size),
            patch_grid=(self.side, self.side),
            token_grid=(self.side, self.side),
            num_tokens=self.side**2,
        )

    def _process(self, texts, images, geometries) -> dict:
        encoded = super()._process(texts, images, geometries)
        types = encoded.pop("token_type_ids", None)
        if types is not None and bool((types != 0).any()):
            raise ValueError("prompts with a suffix (token_type_ids 1) are not inputs: give the prompt alone")
        return encoded  # the image token mask and attention mask carry everything, see image_token_types

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
            tower_hidden_states=tuple(out.hidden_states),
        )

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """Mean received attention per patch (SigLIP has no class token); one patch is one token."""
        block = -1 if block is None else block  # the last block's output feeds the projection
        return list(encoder_block_attention(self.vision_tower, tokens.tower_hidden_states, block, "all"))

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        block = -1 if block is None else block
        return list(encoder_block_keys(self.vision_tower, tokens.tower_hidden_states, block))

    def image_token_types(self, inputs: MultimodalInputs) -> dict[str, torch.Tensor]:
        # Every token of a prompt is prefix (0): image and prompt attend both ways, as the processor sets.
        return {"token_type_ids": torch.zeros_like(inputs.input_ids)}

    def language_model_kwargs(self, inputs: MultimodalInputs) -> dict[str, Any]:
        return self.image_token_types(inputs)

    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.image_token_id >= self.config.text_config.vocab_size:
            input_ids = input_ids.masked_fill(input_ids == self.image_token_id, 0)
        return self.model.get_input_embeddings()(input_ids)

    def describe_vision(self) -> dict[str, str]:
        vision, size = self.config.vision_config, self.configured_image_size()
        return {
            "vision tower": f"{vision.model_type} ({vision.num_hidden_layers} layers)",
            "patch size": str(vision.patch_size),
            "pooling / merge": "none; one linear projection (prefix-LM: image and prompt attend both ways)",
            "CLS policy": "no CLS",
            "feature layer(s)": "last_hidden_state (after post_layernorm)",
            "image size": f"{size[0]}x{size[1]} (processor resizes)",
        }
