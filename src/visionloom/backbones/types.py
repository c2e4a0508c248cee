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

    `token_grid` is the spatial grid (h, w) in language-model token space that attention maps and
    masks live on; `grid_offsets` are the positions of its cells, in raster order, inside the
    image's run of placeholder tokens (LLaVA-NeXT interleaves newline tokens and puts a base view
    first, so the grid is not simply the first h*w placeholders).
    """

    image_size: tuple[int, int]  # (H, W) of the image handed to build_inputs
    pixel_size: tuple[int, int]  # (H, W) of one pixel tile entering the vision tower
    patch_grid: tuple[int, int]  # (rows, cols) of vision patches per tile
    token_grid: tuple[int, int]  # (h, w) in language-model token space
    num_tokens: int  # placeholder tokens in input_ids for this image
    grid_offsets: tuple[int, ...] | None = None  # None: the grid is placeholders 0 .. h*w-1
    dropped_pixels: tuple[int, int] = (0, 0)  # pixel rows/cols the patch grid leaves out
    dropped_patches: tuple[int, int] = (0, 0)  # patch rows/cols the pooling leaves out

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

    Images are numbered in batch order: all images of sample 0, then sample 1, and so on.
    """

    input_ids: torch.Tensor  # LongTensor [B, S]
    attention_mask: torch.Tensor  # LongTensor [B, S]
    image_token_mask: torch.Tensor  # BoolTensor [B, S], True on image placeholders
    # per sample, per image: [start, end) in the sequence, from its first placeholder to its last
    image_spans: list[list[tuple[int, int]]]
    geometries: list[ImageGeometry]  # per image, batch order
    model_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, grids, ...
    # per image, batch order: LongTensor [num_tokens], the sequence positions of its placeholders.
    # One contiguous run for most families; Mistral3 writes a text token after each row and SmolVLM
    # text markers before each tile, so theirs come in runs with text between.
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

    `embeds` are exactly the vectors the language model receives at the image placeholders.
    `raw` are the tower features they were projected from, after the model's own layer selection
    and CLS policy, on the patch grid the projector consumed (for LLaVA and DeepSeek-VL one raw
    row per embedding; for Qwen2.5-VL four rows per embedding, the 2x2 patches it merges; for
    Gemma3/T5Gemma2 the full patch grid before average pooling; for LLaVA-NeXT every tile).
    """

    embeds: torch.Tensor  # [T, D_text], T = sum(counts)
    raw: torch.Tensor  # [R, C_vision], R = sum(raw_counts)
    counts: list[int]  # embeddings per image
    raw_counts: list[int]  # raw rows per image
    geometries: list[ImageGeometry]  # per image
    feature_source: str  # what the tower output was, e.g. "hidden_states[-2], CLS dropped"
    tower_hidden_states: tuple[torch.Tensor, ...] | None = None  # every tower layer, same pass
    # Qwen3-VL's DeepStack: per early language layer k, [T, D_text] added to the hidden state leaving
    # layer k at each image token (row i belongs to embeds row i); empty for other families.
    deepstack: tuple[torch.Tensor, ...] = ()

    @property
    def grids(self) -> list[tuple[int, int]]:
        return [g.token_grid for g in self.geometries]

    def per_image(self) -> list[torch.Tensor]:
        """Embeddings split per image: list of [counts[i], D_text]."""
        return list(torch.split(self.embeds, self.counts))

    def raw_per_image(self) -> list[torch.Tensor]:
        return list(torch.split(self.raw, self.raw_counts))


@dataclass
class LayerOutput:
    """The language model's outputs on inputs with image tokens inserted."""

    logits: torch.Tensor | None  # [B, S, V] (decoder positions for encoder-decoder models)
    last_hidden_state: torch.Tensor  # [B, S, D] of the model that holds the image tokens
    inputs_embeds: torch.Tensor  # [B, S, D] what went into that model
    hidden_states: tuple[torch.Tensor, ...] | None = None  # per layer, [B, S, D]
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer, [B, heads, S, S]
    # Per image, batch order: attention from every position of its sample to its token grid,
    # [layers, heads, S, h, w].
    image_attentions: list[torch.Tensor] | None = None
