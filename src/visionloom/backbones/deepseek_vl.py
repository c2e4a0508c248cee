"""DeepSeek-VL (`DeepseekVLForConditionalGeneration`): a fixed-size SigLIP tower and a two-layer aligner.

Every patch of the tower's last hidden state (after post_layernorm; SigLIP has no CLS) becomes one
`<image_placeholder>` token. The processor writes a fixed `num_image_tokens` per image, which must
equal the tower's patch count.
"""

from __future__ import annotations

from transformers import DeepseekVLForConditionalGeneration

from visionloom.backbones.patch_tokens import PatchTokenAdapter


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
