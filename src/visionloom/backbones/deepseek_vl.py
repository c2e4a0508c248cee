"""DeepSeek-VL (`DeepseekVLForConditionalGeneration`): a fixed-size SigLIP tower and a two-layer aligner.

Every patch of the tower's last hidden state (after post_layernorm; SigLIP has no CLS) becomes one
`<image_placeholder>` token. The processor writes a fixed `num_image_tokens` per image, which must
equal the tower's patch count.
"""

from __future__ import annotations

from typing import Any

from transformers import DeepseekVLConfig, DeepseekVLForConditionalGeneration, DeepseekVLProcessor
from transformers.models.deepseek_vl.image_processing_pil_deepseek_vl import DeepseekVLImageProcessorPil

from visionloom.backbones.patch_tokens import PatchTokenAdapter
from visionloom.backbones.tiny_parts import LAYERS, build_tokenizer, llama_text, preset, siglip_tower


class DeepseekVLAdapter(PatchTokenAdapter):
    family = "deepseek-vl"
    model_types = ("deepseek_vl",)
    model_class = DeepseekVLForConditionalGeneration
    marker = "<image_placeholder>"
    projector_path = "model.aligner"
    vision_tower_path = "model.vision_model"
    count_setting = "num_image_tokens"
    projection_description = "none"

    def _process(self, texts, images, geometries) -> dict:
        native = {"do_resize": False} if self.native_resolution else {}
        return super()._process(texts, images, geometries, **native)


@preset("tiny-deepseek-vl")
def tiny_deepseek_vl(text_layers: int = LAYERS, **config_overrides: Any) -> DeepseekVLAdapter:
    """DeepSeek-VL shape: SigLIP at 112 px, patch 14 -> 8x8 = 64 tokens, two-layer aligner."""
    specials = ["<unk>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>", "<pad>"]
    tokenizer = build_tokenizer(
        specials,
        {"image_token": "<image_placeholder>"},
        bos_token=specials[1],
        eos_token=specials[2],
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = DeepseekVLConfig(
        vision_config=siglip_tower(112).to_dict(),
        text_config=llama_text(len(tokenizer), text_layers, pad_token_id=tokenizer.pad_token_id).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
        **config_overrides,
    )
    image_processor = DeepseekVLImageProcessorPil(size={"height": 112, "width": 112})
    processor = DeepseekVLProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=64)
    return DeepseekVLAdapter(DeepseekVLAdapter.model_class(config).eval(), processor)
