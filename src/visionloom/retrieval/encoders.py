"""Image and text encoders of the retrieval models, each over a real `transformers` class.

An image encoder maps uint8 images [B, 3, H, W] to `ImageOutput` (a pooled vector and the token
sequence it came from); a text encoder maps (caption_ids, caption_mask) to a pooled vector. The
models in `retrieval/model.py` are these two plus projection heads and losses.

    CLIP vision / CLIP text          CLIPVisionModelWithProjection / CLIPTextModelWithProjection
    SigLIP vision                    SiglipVisionModel (attention-pool head, or mean of patches)
    T5 text                          T5EncoderModel, mean over the attention mask
    SigLIP -> T5 shared (phase 3)    patches -> Linear -> [CLS] + tokens -> the text's T5 encoder
    T5Gemma2 shared                  the image-token layer's dynamic path into the T5Gemma2 encoder

Images are normalised on the device with the mean and std of the backbone's image processor
(written by hand: one affine map, so the loader can ship uint8 and augment before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
    SiglipVisionModel,
    T5EncoderModel,
)

from visionloom.backbones.base import GENERIC_MARKER, nearest_multiples
from visionloom.backbones.checks import ImageTokenMismatch


@dataclass
class ImageOutput:
    pooled: torch.Tensor  # [B, D] one vector per image
    tokens: torch.Tensor | None = None  # [B, N, D'] the sequence pooled from, without CLS
    token_mask: torch.Tensor | None = None  # [B, N'] where a model pools over part of a longer sequence
    extra: dict | None = None  # what a generator may reuse (the T5Gemma2 encoder output)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, S, D], [B, S] -> [B, D]: the mean over positions where mask is set."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B, S, 1]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def check_patch_grid(image_size: tuple[int, int], patch_size: int, who: str) -> tuple[int, int]:
    """The patch grid of `image_size`, or an error naming sizes that work (a conv floors silently)."""
    height, width = image_size
    if height % patch_size or width % patch_size:
        raise ImageTokenMismatch(
            f"{who}: image size {height}x{width} is not a multiple of the patch size {patch_size}; the "
            f"patch embedding would drop the remainder. Heights that work: {nearest_multiples(height, patch_size)}, "
            f"widths: {nearest_multiples(width, patch_size)}"
        )
    return height // patch_size, width // patch_size


class Normalise(nn.Module):
    """uint8 [B, 3, H, W] -> float, (x / 255 - mean) / std, with the image processor's mean and std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 [B, 3, H, W] as the loader gives them, got {images.dtype}")
        return (images.float() / 255.0 - self.mean) / self.std


class ClipImageEncoder(nn.Module):
    """CLIP's CLS, post-layernorm and visual projection, at any patch-aligned size (interpolated positions)."""

    projected = True

    def __init__(self, model: CLIPVisionModelWithProjection, image_size: tuple[int, int], mean, std):
        super().__init__()
        self.model = model
        self.normalise = Normalise(mean, std)
        self.grid = check_patch_grid(image_size, model.config.patch_size, "CLIP vision")
        self.width = model.config.projection_dim
        self.token_width = model.config.hidden_size

    def forward(self, images: torch.Tensor) -> ImageOutput:
        out = self.model(pixel_values=self.normalise(images), interpolate_pos_encoding=True)
        # last_hidden_state: [B, 1 + h*w, C]; position 0 is CLS
        return ImageOutput(pooled=out.image_embeds, tokens=out.last_hidden_state[:, 1:])


class SiglipImageEncoder(nn.Module):
    """SigLIP's attention-pool head (or the mean of its patch tokens when the config has no head)."""

    projected = False

    def __init__(self, model: SiglipVisionModel, image_size: tuple[int, int], mean, std):
        super().__init__()
        self.model = model
        self.normalise = Normalise(mean, std)
        self.grid = check_patch_grid(image_size, model.config.patch_size, "SigLIP vision")
        self.width = self.token_width = model.config.hidden_size

    def forward(self, images: torch.Tensor) -> ImageOutput:
        out = self.model(pixel_values=self.normalise(images), interpolate_pos_encoding=True)
        tokens = out.last_hidden_state  # [B, h*w, C]; SigLIP has no CLS
        pooled = out.pooler_output if out.pooler_output is not None else tokens.mean(1)
        return ImageOutput(pooled=pooled, tokens=tokens)


class ClipTextEncoder(nn.Module):
    """CLIP's end-of-text token, final layernorm and text projection."""

    projected = True

    def __init__(self, model: CLIPTextModelWithProjection):
        super().__init__()
        self.model = model
        self.width = model.config.projection_dim

    def forward(self, caption_ids: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=caption_ids, attention_mask=caption_mask).text_embeds


class T5TextEncoder(nn.Module):
    """T5's encoder over the caption, mean-pooled over its attention mask (variable length)."""

    projected = False

    def __init__(self, model: T5EncoderModel):
        super().__init__()
        self.model = model
        self.width = model.config.d_model

    def forward(self, caption_ids: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=caption_ids, attention_mask=caption_mask).last_hidden_state  # [B, S, D]
        return masked_mean(hidden, caption_mask)


class T5ImageEncoder(nn.Module):
    """Phase 3's image path: SigLIP patch tokens -> Linear -> [CLS] + tokens -> the shared T5 encoder.

    The T5 encoder is the same module the text goes through (native Siamese). The image sequence is
    pooled at the learnable CLS when there is one, else by the mean of its tokens.
    """

    projected = False

    def __init__(self, vision: SiglipImageEncoder, t5: T5EncoderModel, use_cls: bool = True):
        super().__init__()
        self.vision = vision
        self.t5 = t5
        self.width = t5.config.d_model
        self.to_t5 = nn.Linear(vision.token_width, self.width)
        self.cls = nn.Parameter(torch.randn(1, 1, self.width) * 0.02) if use_cls else None

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> image tokens in T5 width [B, h*w, D] (no CLS)."""
        patches = self.vision(images).tokens  # [B, h*w, C_vision]
        return self.to_t5(patches)  # [B, h*w, D]

    def forward(self, images: torch.Tensor) -> ImageOutput:
        tokens = self.embed_tokens(images)  # [B, N, D]
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)  # [B, 1 + N, D]
        mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        hidden = self.t5(inputs_embeds=tokens, attention_mask=mask).last_hidden_state  # [B, 1 + N, D]
        pooled = hidden[:, 0] if self.cls is not None else hidden.mean(1)
        return ImageOutput(pooled=pooled, tokens=hidden[:, 1:] if self.cls is not None else hidden)


class T5Gemma2ImageEncoder(nn.Module):
    """The T5Gemma2 system: 384x128 images through the image-token layer into the T5Gemma2 encoder.

    The number of image tokens comes from the layer's geometry for the image size (12 for the tiny
    preset at 384x128), never from a typed constant; the layer checks placeholders against features
    and widths before the encoder runs. Pooled by the mean of the encoder's states at the image tokens.
    """

    projected = False

    def __init__(self, adapter):
        super().__init__()
        self.model = adapter.model  # registered, so it moves, trains and saves with the retrieval model
        self.adapter = adapter  # not an nn.Module: holds the processor and the layer's logic
        self.width = adapter.text_width

    def forward(self, images: torch.Tensor) -> ImageOutput:
        arrays = [image.permute(1, 2, 0).cpu().numpy() for image in images]  # HWC uint8, for the processor
        inputs = self.adapter.build_inputs(arrays, [GENERIC_MARKER] * len(arrays))
        inputs = inputs.to(self.model.device)
        out = self.adapter.forward(inputs)  # encoder states [B, S, D]
        pooled = masked_mean(out.last_hidden_state, inputs.image_token_mask)
        extra = {"encoder_states": out.last_hidden_state, "attention_mask": inputs.attention_mask}
        return ImageOutput(pooled=pooled, token_mask=inputs.image_token_mask, extra=extra)


class T5Gemma2TextEncoder(nn.Module):
    """The same T5Gemma2 encoder over the caption alone, mean-pooled over its attention mask."""

    projected = False

    def __init__(self, adapter):
        super().__init__()
        self.model = adapter.model
        self.adapter = adapter
        self.width = adapter.text_width

    def forward(self, caption_ids: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.adapter.encoder(input_ids=caption_ids, attention_mask=caption_mask).last_hidden_state
        return masked_mean(hidden, caption_mask)


def ensure_width(output: ImageOutput, expected: int, who: str) -> None:
    """The features must be as wide as what reads them (skipping the projection leaves them at the vision width)."""
    if output.pooled.shape[-1] != expected:
        raise ImageTokenMismatch(
            f"{who}: image features are {output.pooled.shape[-1]} wide but the projection expects {expected}"
        )
