"""The scene VLM as the trainer sees it: the real model through the layer, and its two losses.

The language-model loss covers every text token after the image. The per-token warm-up loss
(`cell_weight`) makes each image token predict the colour and shape under it and its cell's
location: with the answer loss alone, a tiny model trained from random weights learns the language
prior and barely looks. The warm-up head is a training aid and stays out of the VLM's checkpoint,
which is exactly the transformers model `backbones.load` reads back; `vlm pretrain` writes it
beside it (OUT/cell_head.safetensors), for probing what the image tokens carry.
"""

from __future__ import annotations

import torch
from torch import nn

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.data.scenes import CELL_CLASSES, cell_places
from visionloom.data.synth_scenes import COLOURS, LOCATIONS, SHAPES
from visionloom.vlm.answers import answer_loss

# The head's output, in order: "none" + each colour, "none" + each shape, each place.
CELL_LAYOUT = ",".join(["none", *COLOURS, "none", *SHAPES, *LOCATIONS])


class AnswerModel(nn.Module):
    """The VLM as the trainer sees it: forward(batch) -> {"lm_loss", ["cell_loss"]} through the layer."""

    def __init__(self, adapter: ImageTokenAdapter, cell_weight: float = 0.0):
        super().__init__()
        self.adapter = adapter
        self.vlm = adapter.model  # registered, so the trainer optimises and checkpoints it
        self.cell_weight = cell_weight
        # Colour and shape of what lies under each image token (0: background); not saved with the VLM.
        self.cell_head = nn.Linear(adapter.text_width, CELL_CLASSES) if cell_weight else None

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        inputs = batch["inputs"]
        tokens = self.adapter.encode_images(inputs)  # one tower pass, shared by both losses
        logits = self.adapter.forward(inputs, tokens).logits  # [B, S, V]
        losses = {"lm_loss": answer_loss(logits, batch["labels"])}
        if self.cell_head is not None and "cell_colours" in batch:
            if any(g.grid_offsets is not None for g in tokens.geometries):
                raise ValueError(
                    "cell labels need image tokens in raster order of the grid (LLaVA, Qwen2.5-VL)"
                )
            cells = self.cell_head(tokens.embeds)  # [T, colours+1 + shapes+1 + places]
            colour_logits, shape_logits, place_logits = cells.split(
                [len(COLOURS) + 1, len(SHAPES) + 1, len(LOCATIONS)], dim=-1
            )
            places = torch.cat([cell_places(g.token_grid) for g in tokens.geometries]).to(cells.device)
            cross_entropy = nn.functional.cross_entropy
            cell_loss = (
                cross_entropy(colour_logits, batch["cell_colours"])
                + cross_entropy(shape_logits, batch["cell_shapes"])
                + cross_entropy(place_logits, places)
            )
            losses["cell_loss"] = self.cell_weight * cell_loss
        return losses
