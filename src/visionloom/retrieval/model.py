"""The retrieval model: an image encoder, a text encoder, projection heads, losses, an optional generator.

Every phase is this one class with other parts (see `retrieval/build.py`). What the trainer and the
evaluator may call is the whole interface:

    forward(batch) -> {"sdm_loss", "id_loss", ["itc_loss"], ["gen_loss"]}   the trainer sums *loss* keys
    encode_image(images uint8 [B, 3, H, W]) -> [B, E]                      not normalised; the evaluator does
    encode_text(caption_ids [B, S], caption_mask [B, S]) -> [B, E]
    tokenize(captions) -> {"caption_ids", "caption_mask"}

The batch contract (built by `retrieval/datasets.py`):
    images            uint8 [B, 3, H, W]   augmented, at `input_spec.image_size`
    caption_ids       long  [B, S]         clean captions: the only text SDM, ITC and ID ever see
    caption_mask      long  [B, S]
    pids              long  [B]            training identities, 0..N-1
    image_ids         long  [B]            which image each pair came from (SDM's label smoothing)
    and, when the generator asks for them (`input_spec`):
    masked_caption_ids long [B, S]         a copy with tokens replaced by the mask token
    masked_images     uint8 [B, 3, H, W]   a copy with blocks of the VQ grid greyed out
    vq_ids            long  [B, L]         the image's VQ codes from the offline cache (absent when online)

The generator (phase 4's masked-image decoder, or T5Gemma2's caption decoder) runs only in
`forward`; `encode_image` and `encode_text` never touch it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, T5Config, T5EncoderModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5Stack

from visionloom.retrieval.config import LossConfig
from visionloom.retrieval.encoders import ImageOutput, T5ImageEncoder, ensure_width
from visionloom.retrieval.loss import generation_loss, id_loss, itc_loss, sdm_loss


@dataclass
class InputSpec:
    """What the data pipeline must give this model: sizes, tokenizer, and which extra fields."""

    image_size: tuple[int, int]
    tokenizer: PreTrainedTokenizerBase
    max_text_length: int
    text_mask_ratio: float = 0.0  # > 0: masked_caption_ids are built
    image_mask_grid: tuple[int, int] | None = None  # set: masked_images are built on this grid
    image_mask_ratio: float = 0.0
    vq_code_grid: tuple[int, int] | None = None  # set: the generator needs vq_ids of this grid
    notes: list[str] = field(default_factory=list)


class MaskedImageGenerator(nn.Module):
    """Phase 4: [masked caption ; masked image tokens] + modality embedding -> shared T5 -> T5 decoder -> VQ ids.

    The encoder side reuses the model's own T5 and image path (the point of the auxiliary task is
    to shape them); the decoder, its embedding and its head are used nowhere else.
    """

    def __init__(
        self,
        image_path: T5ImageEncoder,
        t5: T5EncoderModel,
        codebook_size: int,
        decoder_layers: int = 2,
        vq_model: Any = None,  # a VQTokenizer, to encode codes online
    ):
        super().__init__()
        self.image_path = image_path
        self.t5 = t5
        width = t5.config.d_model
        self.modality = nn.Embedding(2, width)  # 0 text, 1 image
        settings = t5.config.to_dict()
        settings.update(
            is_decoder=True,
            is_encoder_decoder=False,
            use_cache=False,
            num_layers=decoder_layers,
            vocab_size=codebook_size + 1,  # the codes and one start token
        )
        self.decoder = T5Stack(T5Config(**settings))
        self.head = nn.Linear(width, codebook_size, bias=False)
        self.start_id = codebook_size
        # Only for online encoding; frozen, and None when the codes come from the offline cache.
        # Held in a tuple so it is neither trained nor saved: the checkpoint is the same either way.
        # In a tuple, not a submodule: the tokenizer is frozen and is not part of this model's weights.
        self.online_vq = (vq_model,) if vq_model is not None else ()

    def targets(self, batch: dict) -> torch.Tensor:
        if "vq_ids" in batch:
            return batch["vq_ids"]
        if not self.online_vq:
            raise KeyError(
                "the batch has no vq_ids and the model has no VQ model to encode online: build the "
                "offline cache (`visionloom retrieval vq cache`) or set vq.online: true"
            )
        from visionloom.retrieval.vq import encode_codes

        vq = self.online_vq[0].to(batch["images"].device)
        return encode_codes(vq, batch["images"]).flatten(1)  # [B, L]

    def forward(self, batch: dict, image_output: ImageOutput) -> torch.Tensor:
        text = self.t5.shared(batch["masked_caption_ids"]) + self.modality.weight[0]  # [B, S, D]
        image = self.image_path.embed_tokens(batch["masked_images"]) + self.modality.weight[1]  # [B, N, D]
        condition = torch.cat([text, image], dim=1)  # [B, S + N, D]
        image_mask = torch.ones(image.shape[:2], dtype=batch["caption_mask"].dtype, device=image.device)
        mask = torch.cat([batch["caption_mask"], image_mask], dim=1)  # [B, S + N]
        encoded = self.t5(inputs_embeds=condition, attention_mask=mask).last_hidden_state  # [B, S + N, D]

        targets = self.targets(batch)  # [B, L]
        start = torch.full_like(targets[:, :1], self.start_id)
        decoder_input = torch.cat([start, targets[:, :-1]], dim=1).clamp(min=0)  # [B, L], teacher forcing
        decoder_input = decoder_input.masked_fill(decoder_input == -100, self.start_id)
        hidden = self.decoder(
            input_ids=decoder_input, encoder_hidden_states=encoded, encoder_attention_mask=mask
        ).last_hidden_state  # [B, L, D]
        return generation_loss(self.head(hidden), targets)  # logits [B, L, codebook]


class CaptionGenerator(nn.Module):
    """T5Gemma2's own decoder writes the caption from the image's encoder states (the T5Gemma2 system's caption loss)."""

    def __init__(self, adapter):
        super().__init__()
        self.model = adapter.model
        self.adapter = adapter

    def forward(self, batch: dict, image_output: ImageOutput) -> torch.Tensor:
        labels = batch["caption_ids"].masked_fill(batch["caption_mask"] == 0, -100)  # [B, S]
        decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels)
        encoder_outputs = BaseModelOutput(last_hidden_state=image_output.extra["encoder_states"])
        logits = self.model(
            encoder_outputs=encoder_outputs,
            attention_mask=image_output.extra["attention_mask"],
            decoder_input_ids=decoder_input_ids,
        ).logits  # [B, S, vocab]
        return generation_loss(logits, labels)


class DualEncoder(nn.Module):
    """Image and text encoders into one embedding space, trained with SDM (+ ITC, ID, generation)."""

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        *,
        embed_dim: int,
        num_identities: int,
        input_spec: InputSpec,
        loss: LossConfig,
        generator: nn.Module | None = None,
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        # Backbones that come with their own projection (CLIP) keep it, as IRRA does.
        self.image_proj = self._head(image_encoder, embed_dim)
        self.text_proj = self._head(text_encoder, embed_dim)
        self.classifier = nn.Linear(embed_dim, num_identities) if loss.id > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        self.generator = generator if loss.enable_gen else None
        if loss.enable_gen and generator is None:
            raise ValueError("loss.enable_gen is set but this architecture has no generator")
        self.loss = loss
        self.input_spec = input_spec
        self.embed_dim = embed_dim

    @staticmethod
    def _head(encoder: nn.Module, embed_dim: int) -> nn.Module:
        if encoder.projected:
            if encoder.width != embed_dim:
                raise ValueError(
                    f"{type(encoder).__name__} projects to {encoder.width} but embed_dim is {embed_dim}; "
                    f"set embed_dim: {encoder.width}"
                )
            return nn.Identity()
        return nn.Linear(encoder.width, embed_dim)

    # ------------------------------------------------------------------ what the evaluator uses
    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        # Right-padded whatever side the tokenizer pads by default: training batches are (retrieval/datasets.py
        # `pad`), and CLIP's absolute positions and end-token pooling must see the same layout.
        encoded = self.input_spec.tokenizer(
            list(captions),
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=self.input_spec.max_text_length,
            return_tensors="pt",
        )
        return {"caption_ids": encoded["input_ids"], "caption_mask": encoded["attention_mask"]}

    def _image(self, images: torch.Tensor) -> tuple[torch.Tensor, ImageOutput]:
        output = self.image_encoder(images)
        ensure_width(output, self.image_encoder.width, type(self.image_encoder).__name__)
        return self.image_proj(output.pooled), output  # [B, E]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._image(images)[0]

    def encode_text(self, caption_ids: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.text_encoder(caption_ids, caption_mask))  # [B, E]

    # ------------------------------------------------------------------ what the trainer uses
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image_features, image_output = self._image(batch["images"])  # [B, E]
        # The clean captions, always: masked ones exist only for the generator (IRRA's in-place bug).
        text_features = self.encode_text(batch["caption_ids"], batch["caption_mask"])  # [B, E]
        logit_scale = 1.0 / self.loss.temperature
        out: dict[str, torch.Tensor] = {}
        if self.loss.sdm > 0:
            out["sdm_loss"] = self.loss.sdm * sdm_loss(
                image_features, text_features, batch["pids"], logit_scale, batch.get("image_ids")
            )
        if self.loss.itc > 0:
            out["itc_loss"] = self.loss.itc * itc_loss(image_features, text_features, logit_scale)
        if self.classifier is not None:
            out["id_loss"] = self.loss.id * id_loss(
                self.classifier(image_features), self.classifier(text_features), batch["pids"]
            )
        if self.generator is not None:
            out["gen_loss"] = self.loss.gen_weight * self.generator(batch, image_output)
        return out
