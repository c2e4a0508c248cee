"""The data that crosses the image-token layer: geometry, model inputs, vision tokens, outputs.

Everything downstream (retrieval, grounding, pruning) speaks in these types, so each field says
its shape and what it is relative to. Tensors are batch-first; "sequence" means the language
model's token sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class ImageGeometry:
    """How one image of a given size becomes language-model tokens, derived from the config.

    Attributes:
        image_size: (H, W) of the image handed to `build_inputs`.
        pixel_size: (H, W) of one pixel tile entering the vision tower.
        patch_grid: (rows, cols) of vision patches per tile.
        token_grid: (h, w), the spatial grid in language-model token space that attention maps
            and masks live on.
        num_tokens: placeholder tokens in `input_ids` for this image (at least h * w: layout
            tokens such as LLaVA-NeXT's row newlines and a base view come on top).
        grid_offsets: positions of the grid's cells, in raster order, inside the image's run of
            placeholders; None when the grid is placeholders 0 .. h*w-1.
        dropped_pixels: pixel (rows, cols) the patch grid leaves out at the bottom/right edge.
        dropped_patches: patch (rows, cols) the pooling leaves out.
    """

    image_size: tuple[int, int]
    pixel_size: tuple[int, int]
    patch_grid: tuple[int, int]
    token_grid: tuple[int, int]
    num_tokens: int
    grid_offsets: tuple[int, ...] | None = None
    dropped_pixels: tuple[int, int] = (0, 0)
    dropped_patches: tuple[int, int] = (0, 0)

    def offsets(self) -> torch.Tensor:
        """LongTensor [h*w]: placeholder index of each grid cell, raster order."""
        h, w = self.token_grid
        if self.grid_offsets is None:
            return torch.arange(h * w)
        return torch.tensor(self.grid_offsets, dtype=torch.long)

    @property
    def drops_anything(self) -> bool:
        return any(self.dropped_pixels) or any(self.dropped_patches)

    def drop_report(self) -> str:
        """One sentence on what the floor division leaves out, empty when nothing is lost."""
        parts = []
        if any(self.dropped_pixels):
            parts.append(
                f"the patch grid {self.patch_grid[0]}x{self.patch_grid[1]} leaves out "
                f"{self.dropped_pixels[0]} pixel rows and {self.dropped_pixels[1]} pixel columns"
            )
        if any(self.dropped_patches):
            parts.append(
                f"pooling to {self.token_grid[0]}x{self.token_grid[1]} tokens leaves out "
                f"{self.dropped_patches[0]} patch rows and {self.dropped_patches[1]} patch columns"
            )
        if not parts:
            return ""
        h, w = self.image_size
        return f"{h}x{w}: " + "; ".join(parts) + " (bottom/right edge)"


@dataclass
class MultimodalInputs:
    """Token ids with exactly the right image placeholders, and the tensors the model needs.

    Built by `ImageTokenAdapter.build_inputs`. Images are numbered in batch order: all images of
    sample 0, then sample 1, and so on.

    Attributes:
        input_ids: LongTensor [B, S].
        attention_mask: LongTensor [B, S], 1 on real tokens (padding on the tokenizer's side).
        image_token_mask: BoolTensor [B, S], True on image placeholders.
        image_spans: per sample, per image: [start, end) in the sequence, from its first
            placeholder to its last.
        geometries: per image, batch order.
        model_inputs: what the family's model takes besides the ids (pixel_values, grids, ...).
        image_positions: per image, batch order: LongTensor [num_tokens], the sequence positions
            of its placeholders. One contiguous run for most families; Mistral3 writes a text
            token after each row and SmolVLM text markers before each tile, so theirs come in runs
            with text between.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_token_mask: torch.Tensor
    image_spans: list[list[tuple[int, int]]]
    geometries: list[ImageGeometry]
    model_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    image_positions: list[torch.Tensor] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_images(self) -> int:
        return len(self.geometries)

    def image_owner(self) -> list[tuple[int, tuple[int, int]]]:
        """(sample index, span) for each image in batch order."""
        return [(b, span) for b, spans in enumerate(self.image_spans) for span in spans]

    def placeholders(self) -> list[tuple[int, torch.Tensor]]:
        """(sample index, LongTensor [num_tokens] sequence positions of its placeholders) for each
        image in batch order: placeholder i of an image (its embedding row i) sits at positions[i]."""
        owners = [sample for sample, _span in self.image_owner()]
        if len(self.image_positions) != len(owners):
            raise ValueError(
                f"{len(owners)} image spans but placeholder positions for {len(self.image_positions)} images: "
                f"build inputs with adapter.build_inputs"
            )
        return list(zip(owners, self.image_positions, strict=True))

    def to(self, device: torch.device | str) -> MultimodalInputs:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.model_inputs.items()}
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            image_token_mask=self.image_token_mask.to(device),
            model_inputs=moved,
        )


@dataclass
class VisionTokens:
    """What one vision-tower pass produced for every image of a batch.

    Attributes:
        embeds: [T, D_text], T = sum(counts): exactly the vectors the language model receives at
            the image placeholders, in placeholder order.
        raw: [R, C_vision], R = sum(raw_counts): the tower features `embeds` were projected from,
            after the model's own layer selection and CLS policy, on the patch grid the projector
            consumed (LLaVA, DeepSeek-VL: one row per embedding; Qwen2.5-VL: four rows per
            embedding, the 2x2 patches it merges; Gemma 3, T5Gemma 2: the full patch grid before
            average pooling; LLaVA-NeXT: every tile).
        counts: embeddings per image.
        raw_counts: raw rows per image.
        geometries: per image, batch order.
        feature_source: what the tower output was, e.g. "hidden_states[-2], CLS dropped".
        tower_hidden_states: every tower layer's hidden states from the same pass (for tower-side
            pruners), or None.
        deepstack: Qwen3-VL's DeepStack features: per early language layer k, [T, D_text] added to
            the hidden state leaving layer k at each image token (row i belongs to `embeds` row
            i); empty for other families.
    """

    embeds: torch.Tensor
    raw: torch.Tensor
    counts: list[int]
    raw_counts: list[int]
    geometries: list[ImageGeometry]
    feature_source: str
    tower_hidden_states: tuple[torch.Tensor, ...] | None = None
    deepstack: tuple[torch.Tensor, ...] = ()

    @property
    def grids(self) -> list[tuple[int, int]]:
        """Per image, its token grid (h, w)."""
        return [g.token_grid for g in self.geometries]

    def per_image(self) -> list[torch.Tensor]:
        """Embeddings split per image: list of [counts[i], D_text]."""
        return list(torch.split(self.embeds, self.counts))

    def raw_per_image(self) -> list[torch.Tensor]:
        return list(torch.split(self.raw, self.raw_counts))


@dataclass
class LayerOutput:
    """The language model's outputs on inputs with image tokens inserted.

    Attributes:
        logits: [B, S, V] (decoder positions for encoder-decoder models), or None.
        last_hidden_state: [B, S, D] of the model that holds the image tokens (T5Gemma 2: the
            encoder).
        inputs_embeds: [B, S, D], what went into that model.
        hidden_states: per layer [B, S, D], when asked for.
        attentions: per layer [B, heads, S, S], when asked for.
        image_attentions: per image, batch order: the attention from every position of its sample
            to its token grid, [layers, heads, S, h, w], when attentions were asked for.
    """

    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor
    inputs_embeds: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: list[torch.Tensor] | None = None
