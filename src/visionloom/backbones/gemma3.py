"""Gemma3 (`Gemma3ForConditionalGeneration`): SigLIP tower, average pooling, soft-embedding norm, projection.

The stock projector reshapes the tower's patches to a fixed square grid (image_size / patch_size
per side), average-pools it to sqrt(mm_tokens_per_image) per side, applies `mm_soft_emb_norm` and
multiplies by `mm_input_projection_weight` (vision width -> text width). That only works at the
configured square size. With `native_resolution=True` the adapter takes the dynamic path
that 384x128 person images need: position embeddings interpolated to the real patch grid, the
same pooling kernel over that grid (floor: what it drops is reported), the same norm and the same
projection, inserted through `inputs_embeds`. At the configured size both paths are bit-identical.
T5Gemma2 shares this projector and subclasses this adapter.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

from visionloom.backbones.base import ImageTokenAdapter, nearest_multiples
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tiny_parts import (
    LAYERS,
    gemma_processor,
    gemma_text,
    gemma_tokenizer,
    preset,
    randomise_zero_init,
    siglip_tower,
)
from visionloom.backbones.tower_attention import encoder_block_attention, encoder_block_keys
from visionloom.backbones.types import ImageGeometry, MultimodalInputs, VisionTokens


class Gemma3Adapter(ImageTokenAdapter):
    family = "gemma3"
    model_types = ("gemma3",)
    model_class = Gemma3ForConditionalGeneration
    marker = "<start_of_image>"
    projector_steps = "avg pool, mm_soft_emb_norm, mm_input_projection_weight"

    # --- where the parts live (T5Gemma2 keeps them inside its encoder)
    @property
    def vision_config(self):
        return self.config.vision_config

    @property
    def mm_tokens_per_image(self) -> int:
        return int(self.config.mm_tokens_per_image)

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def vision_width(self) -> int:
        return int(self.vision_config.hidden_size)

    # --- geometry
    @property
    def patches_per_side(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def pool_kernel(self) -> int:
        return self.patches_per_side // math.isqrt(self.mm_tokens_per_image)

    def configured_image_size(self) -> tuple[int, int]:
        size = self.vision_config.image_size
        return size, size

    def processor_image_token_id(self) -> int:
        # The processor's `image_token` is its begin-of-image marker; each expands into the
        # tokenizer's image token (its `image_text`, and the presets' tokenizers, write that).
        return int(self.tokenizer.image_token_id)

    def validate_config(self) -> None:
        tokens, per_side = self.mm_tokens_per_image, self.patches_per_side
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ImageTokenMismatch(
                f"mm_tokens_per_image={tokens} is not a square number; the projector pools to a square grid"
            )
        if per_side % side:
            raise ImageTokenMismatch(
                f"mm_tokens_per_image={tokens} ({side}x{side}) does not divide the vision config's "
                f"{per_side}x{per_side} patch grid (image_size {self.vision_config.image_size} / patch_size "
                f"{self.vision_config.patch_size}): the pooling kernel would be {per_side / side:.2f}. "
                f"Divisors that work: {[d * d for d in range(1, per_side + 1) if per_side % d == 0]}"
            )
        image_seq_length = getattr(self.processor, "image_seq_length", tokens)
        if image_seq_length != tokens:
            raise ImageTokenMismatch(
                f"processor image_seq_length={image_seq_length} but the model's mm_tokens_per_image={tokens}"
            )
        size = self.processor.image_processor.size
        if (size["height"], size["width"]) != self.configured_image_size():
            raise ImageTokenMismatch(
                f"image processor resizes to {size['height']}x{size['width']} but the vision config's "
                f"image_size is {self.vision_config.image_size}"
            )

    def geometry(self, height: int, width: int) -> ImageGeometry:
        patch, kernel = self.vision_config.patch_size, self.pool_kernel
        if not self.native_resolution:
            size, per_side = self.configured_image_size()[0], self.patches_per_side
            side = per_side // kernel
            return ImageGeometry(
                image_size=(height, width),
                pixel_size=(size, size),
                patch_grid=(per_side, per_side),
                token_grid=(side, side),
                num_tokens=side * side,
            )
        patch_rows, patch_cols = height // patch, width // patch
        rows, cols = patch_rows // kernel, patch_cols // kernel
        if rows == 0 or cols == 0:
            step = patch * kernel
            raise ImageTokenMismatch(
                f"{height}x{width} does not fit: one token needs {step}x{step} pixels (patch {patch} x pooling "
                f"{kernel}); nearest heights {nearest_multiples(max(height, step), step)}, "
                f"nearest widths {nearest_multiples(max(width, step), step)}"
            )
        return ImageGeometry(
            image_size=(height, width),
            pixel_size=(height, width),
            patch_grid=(patch_rows, patch_cols),
            token_grid=(rows, cols),
            num_tokens=rows * cols,
            dropped_pixels=(height - patch_rows * patch, width - patch_cols * patch),
            dropped_patches=(patch_rows - rows * kernel, patch_cols - cols * kernel),
        )

    def exact_sizes_near(self, height: int, width: int) -> list[tuple[int, int]]:
        """Sizes near height x width that neither the patch grid nor the pooling floors (384x128 -> 392x112)."""
        step = self.vision_config.patch_size * self.pool_kernel
        return [(h, w) for h in nearest_multiples(height, step, 1) for w in nearest_multiples(width, step, 1)]

    # --- inputs
    def image_text(self, num_tokens: int) -> str:
        tokenizer = self.tokenizer
        return f"\n\n{tokenizer.boi_token}{tokenizer.image_token * num_tokens}{tokenizer.eoi_token}\n\n"

    def image_span_ids(self, geometry: ImageGeometry) -> list[int]:
        return self.tokenizer.encode(self.image_text(geometry.num_tokens), add_special_tokens=False)

    def normalise_processed(self, encoded: dict) -> dict:
        encoded.pop("token_type_ids", None)  # forward derives it from the image token mask
        return encoded

    def _process(self, texts, images, geometries) -> dict:
        if not self.native_resolution:
            # Gemma3's processor takes the images grouped per sample.
            has_images = any(images)
            encoded = self.processor(
                text=texts, images=images if has_images else None, padding=True, return_tensors="pt"
            )
            return self.normalise_processed(dict(encoded))
        # The stock processor writes mm_tokens_per_image placeholders whatever the size, so at native
        # resolution the markers are expanded here from each image's geometry.
        sizes = {g.image_size for g in geometries}
        if len(sizes) > 1:
            raise ValueError(
                f"native resolution batches images of one size only; this batch has {sorted(sizes)}"
            )
        expanded, cursor = [], 0
        for text in texts:
            pieces = text.split(self.marker)
            out = pieces[0]
            for piece in pieces[1:]:
                out += self.image_text(geometries[cursor].num_tokens) + piece
                cursor += 1
            expanded.append(out)
        encoded = dict(self.tokenizer(expanded, padding=True, return_tensors="pt"))
        encoded.pop("token_type_ids", None)
        flat = [image for sample_images in images for image in sample_images]
        if flat:
            pixels = self.processor.image_processor(flat, do_resize=False, return_tensors="pt")
            encoded["pixel_values"] = pixels["pixel_values"]
        return encoded

    # --- vision
    def project(self, raw: torch.Tensor, geometries) -> torch.Tensor:
        """raw [N * rows*cols, C] -> [N * tokens, D_text]: the projector over each image's patch grid."""
        return self.project_grid(
            raw.view(len(geometries), -1, raw.shape[-1]), geometries[0].patch_grid
        ).flatten(0, 1)

    def project_grid(self, patches: torch.Tensor, patch_grid: tuple[int, int]) -> torch.Tensor:
        """The projector over any patch grid: [N, rows*cols, C] -> [N, (rows//k)*(cols//k), D_text]."""
        projector = self.projector
        batch, _, width = patches.shape
        grid = patches.transpose(1, 2).reshape(batch, width, *patch_grid).contiguous()  # [N, C, rows, cols]
        pooled = projector.avg_pool(grid).flatten(2).transpose(1, 2)  # [N, tokens, C]
        normed = projector.mm_soft_emb_norm(pooled)
        return torch.matmul(normed, projector.mm_input_projection_weight).type_as(patches)  # [N, tokens, D]

    def _stock_image_features(self, pixel_values: torch.Tensor):
        return self.model.model.get_image_features(
            pixel_values=pixel_values, output_hidden_states=True, return_dict=True
        )

    def encode_images(self, inputs: MultimodalInputs) -> VisionTokens:
        pixel_values = inputs.model_inputs["pixel_values"]
        if self.native_resolution:
            tower_out = self.vision_tower(
                pixel_values=pixel_values,
                interpolate_pos_encoding=True,
                output_hidden_states=True,
                return_dict=True,
            )
            patches = tower_out.last_hidden_state  # [N, rows*cols, C] after post_layernorm
            embeds = self.project_grid(patches, inputs.geometries[0].patch_grid)  # [N, tokens, D]
            hidden_states = tower_out.hidden_states
        else:
            out = self._stock_image_features(pixel_values)
            patches, embeds, hidden_states = out.last_hidden_state, out.pooler_output, out.hidden_states
        return VisionTokens(
            embeds=embeds.flatten(0, 1),
            raw=patches.flatten(0, 1),
            counts=[embeds.shape[1]] * embeds.shape[0],
            raw_counts=[patches.shape[1]] * patches.shape[0],
            geometries=list(inputs.geometries),
            feature_source="last_hidden_state (after post_layernorm), full patch grid before pooling",
            tower_hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """Mean received attention per patch (SigLIP has no class token), pooled as the projector pools."""
        block = -1 if block is None else block  # the last block's output feeds the projector
        per_patch = encoder_block_attention(self.vision_tower, tokens.tower_hidden_states, block, "all")
        return [scores.squeeze(-1) for scores in self.pooled(tokens, per_patch.unsqueeze(-1))]

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        block = -1 if block is None else block
        return self.pooled(tokens, encoder_block_keys(self.vision_tower, tokens.tower_hidden_states, block))

    def pooled(self, tokens: VisionTokens, per_patch: torch.Tensor) -> list[torch.Tensor]:
        """[N, patches, C] -> per image [tokens, C]: averaged over each pooling window, as the projector."""
        rows, cols = tokens.geometries[0].patch_grid  # one size per batch (checked in _process)
        grid = per_patch.view(-1, rows, cols, per_patch.shape[-1]).permute(0, 3, 1, 2)  # [N, C, rows, cols]
        pooled = self.projector.avg_pool(grid)  # [N, C, rows // k, cols // k]
        return list(pooled.flatten(2).transpose(1, 2))

    # --- language model
    def image_token_types(self, inputs: MultimodalInputs) -> dict[str, torch.Tensor]:
        # token_type_ids make the image tokens attend to each other bidirectionally, as the model expects.
        return {"token_type_ids": inputs.image_token_mask.long()}

    def language_model_kwargs(self, inputs: MultimodalInputs) -> dict[str, Any]:
        return self.image_token_types(inputs)

    def describe_vision(self) -> dict[str, str]:
        vision, size = self.vision_config, self.configured_image_size()
        side = math.isqrt(self.mm_tokens_per_image)
        return {
            "vision tower": f"{vision.model_type} ({vision.num_hidden_layers} layers)",
            "patch size": str(vision.patch_size),
            "pooling / merge": f"avg pool {self.pool_kernel}x{self.pool_kernel} -> {side}x{side} "
            f"(mm_tokens_per_image={self.mm_tokens_per_image}), soft-emb norm, projection",
            "CLS policy": "no CLS",
            "feature layer(s)": "last_hidden_state (after post_layernorm)",
            "image size": f"{size[0]}x{size[1]}"
            + (
                " configured; native sizes via interpolated positions"
                if self.native_resolution
                else " (processor resizes)"
            ),
            "vision width": str(self.vision_width),
            "text width": str(self.text_width),
            "image token id": f"{self.image_token_id} ({self.image_token})",
            "attention": self.attention_implementation(),
        }


@preset("tiny-gemma3")
def tiny_gemma3(
    text_overrides: dict[str, Any] | None = None, text_layers: int = LAYERS, **config_overrides: Any
) -> Gemma3Adapter:
    """Gemma3 shape: SigLIP at 224 px, patch 14 (16x16 patches), pooled 4x4 -> 4x4 = 16 tokens."""
    tokenizer = gemma_tokenizer()
    settings = {"mm_tokens_per_image": 16}
    settings.update(config_overrides)
    config = Gemma3Config(
        vision_config=siglip_tower(224).to_dict(),
        text_config={**gemma_text(len(tokenizer), tokenizer, text_layers), **(text_overrides or {})},
        image_token_id=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_id=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_id=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        **settings,
    )
    model = Gemma3Adapter.model_class(config).eval()
    randomise_zero_init(model)
    return Gemma3Adapter(model, gemma_processor(tokenizer, 224, config.mm_tokens_per_image))
