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
- The image token's id may lie outside the language model's vocabulary, as in Gemma 3; the base
  adapter's `text_embeddings` maps it to 0, as the model does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from visionloom.backbones.patch_tokens import PatchTokenAdapter
from visionloom.backbones.tiny_parts import LAYERS, WIDTH, build_tokenizer, gemma_text, preset, siglip_tower
from visionloom.backbones.types import MultimodalInputs


class PaliGemmaAdapter(PatchTokenAdapter):
    family = "paligemma"
    model_types = ("paligemma",)
    model_class = PaliGemmaForConditionalGeneration
    marker = "<image>"
    supports_native_resolution = False
    position_offset: ClassVar[int] = 1
    vision_tower_path = "model.vision_tower"
    count_setting = "image_seq_length"
    projection_description = "none; one linear projection (prefix-LM: image and prompt attend both ways)"

    def normalise_processed(self, encoded: dict) -> dict:
        types = encoded.pop("token_type_ids", None)
        if types is not None and bool((types != 0).any()):
            raise ValueError("prompts with a suffix (token_type_ids 1) are not inputs: give the prompt alone")
        return encoded  # every prompt token is prefix, see image_token_types

    def image_token_types(self, inputs: MultimodalInputs) -> dict[str, torch.Tensor]:
        # Every token of a prompt is prefix (0): image and prompt attend both ways, as the processor sets.
        return {"token_type_ids": torch.zeros_like(inputs.input_ids)}

    def language_model_kwargs(self, inputs: MultimodalInputs) -> dict[str, Any]:
        return self.image_token_types(inputs)


@preset("tiny-paligemma")
def tiny_paligemma(text_layers: int = LAYERS, **config_overrides: Any) -> PaliGemmaAdapter:
    """PaliGemma shape: SigLIP at 112 px, patch 14 -> 8x8 = 64 tokens, one projection, a Gemma prefix-LM."""
    tokenizer = build_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"],
        {"image_token": "<image>"},
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    image_processor = SiglipImageProcessorPil(size={"height": 112, "width": 112})
    image_processor.image_seq_length = 64
    processor = PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tokenizer
    )  # adds <loc>/<seg> tokens
    text = gemma_text(len(processor.tokenizer), processor.tokenizer, text_layers)
    text.pop("sliding_window")
    config = PaliGemmaConfig(
        vision_config=siglip_tower(112).to_dict(),
        text_config={**text, "model_type": "gemma"},
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=WIDTH,
        hidden_size=WIDTH,
        vocab_size=len(processor.tokenizer),
        **config_overrides,
    )
    return PaliGemmaAdapter(PaliGemmaAdapter.model_class(config).eval(), processor)
