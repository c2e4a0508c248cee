"""T5Gemma2 (`T5Gemma2ForConditionalGeneration`): Gemma3's image path inside an encoder-decoder.

The SigLIP tower and the Gemma3-style projector live in the encoder, and the image tokens are
encoder tokens; the decoder only cross-attends. The encoder ignores `mm_encoder_outputs`, so the
layer feeds it `inputs_embeds` with the projected features in place. A known bug of this family: a
patched feature function that skipped the projection left 1152-wide features where the text is
640 wide, and the library reported it as "tokens: 14, features 14".
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import T5Gemma2Config, T5Gemma2ForConditionalGeneration

from visionloom.backbones.gemma3 import Gemma3Adapter
from visionloom.backbones.tiny_parts import (
    LAYERS,
    gemma_processor,
    gemma_text,
    gemma_tokenizer,
    preset,
    randomise_zero_init,
    siglip_tower,
)
from visionloom.backbones.types import LayerOutput, MultimodalInputs


class T5Gemma2Adapter(Gemma3Adapter):
    family = "t5gemma2"
    model_types = ("t5gemma2",)
    model_class = T5Gemma2ForConditionalGeneration
    projector_path = "model.encoder.multi_modal_projector"  # the image path lives in the encoder

    @property
    def encoder(self) -> torch.nn.Module:
        return self.model.get_encoder()

    @property
    def vision_config(self):
        return self.config.encoder.vision_config

    @property
    def mm_tokens_per_image(self) -> int:
        return int(self.config.encoder.mm_tokens_per_image)

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.encoder.vision_tower

    @property
    def text_width(self) -> int:
        return int(self.config.encoder.text_config.hidden_size)

    @property
    def image_token_id(self) -> int:
        return int(self.config.encoder.image_token_id)

    def attention_implementation(self) -> str:
        return str(self.config.encoder.text_config._attn_implementation)

    def attention_config_key(self) -> dict:
        return {"encoder": {"text_config": "eager"}, "decoder": "eager"}

    def _stock_image_features(self, pixel_values: torch.Tensor):
        return self.encoder.get_image_features(
            pixel_values=pixel_values, output_hidden_states=True, return_dict=True
        )

    @property
    def language_module(self) -> torch.nn.Module:
        return self.encoder.text_model

    def model_own_call(self, inputs: MultimodalInputs) -> Any:
        return self.encoder(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, **inputs.model_inputs
        )

    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        # The encoder's own embedding: scaled by sqrt(width), with the end-of-image token's learned vector.
        return self.encoder.text_model.embed_tokens(input_ids)

    def run_language_model(
        self,
        inputs: MultimodalInputs,
        inputs_embeds: torch.Tensor,
        model_kwargs: dict[str, Any],
        **flags: Any,
    ) -> LayerOutput:
        """The encoder on inputs_embeds; the decoder too when `decoder_input_ids` are given."""
        decoder_input_ids = flags.pop("decoder_input_ids", None)
        flags.pop("use_cache", None)  # the encoder keeps no cache; the decoder here runs one prefill
        encoded = self.encoder(
            inputs_embeds=inputs_embeds,
            attention_mask=inputs.attention_mask,
            return_dict=True,
            **model_kwargs,
            **flags,
        )
        logits = None
        if decoder_input_ids is not None:
            logits = self.model(
                encoder_outputs=encoded,
                attention_mask=inputs.attention_mask,
                decoder_input_ids=decoder_input_ids,
            ).logits
        return LayerOutput(
            logits=logits,
            last_hidden_state=encoded.last_hidden_state,
            inputs_embeds=inputs_embeds,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


@preset("tiny-t5gemma2")
def tiny_t5gemma2(text_layers: int = LAYERS, **encoder_overrides: Any) -> T5Gemma2Adapter:
    """T5Gemma2 shape: the Gemma3 image path (224 px, 16 tokens) in an encoder-decoder; 384x128 gives 12."""
    tokenizer = gemma_tokenizer()
    text = gemma_text(len(tokenizer), tokenizer, text_layers)
    encoder = {
        "vision_config": siglip_tower(224).to_dict(),
        "text_config": text,
        "mm_tokens_per_image": 16,
        "boi_token_index": tokenizer.convert_tokens_to_ids("<start_of_image>"),
        "eoi_token_index": tokenizer.convert_tokens_to_ids("<end_of_image>"),
        **encoder_overrides,
    }
    config = T5Gemma2Config(
        encoder=encoder,
        decoder=dict(text),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
    )
    model = T5Gemma2Adapter.model_class(config).eval()
    randomise_zero_init(model)
    processor = gemma_processor(tokenizer, 224, config.encoder.mm_tokens_per_image)
    return T5Gemma2Adapter(model, processor)
