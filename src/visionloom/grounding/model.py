"""The trainable part of F-LMM: text-layer weights, `text_proj`, the mask head and SAM's refinement.

The VLM is not in here. Its attention maps and hidden states are computed once, frozen, by
`grounding/features.py`, so no gradient can reach it and no optimizer ever holds its weights.

The batch contract (`GroundingBatch`, built by `features.collate`):
    attention       float [N, L*H, h, w]   merged over each expression's tokens, on the token grid
    hidden          list of [K, n_i, D]    each expression's hidden states, last K layers
    paddings        list of Padding        the square the VLM saw, to crop masks back
    masks           list of bool [H_i, W_i] ground truth on the image
    sam_embeddings  float [N, C, e, e]     SAM's image embeddings (when SAM is used)
    sam_sizes       long [N, 2]            the image's size inside SAM's input square
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from visionloom.grounding.attention import Padding
from visionloom.grounding.config import HeadConfig
from visionloom.grounding.head import MaskHead
from visionloom.grounding.loss import mask_loss
from visionloom.grounding.sam import SamRefiner


@dataclass
class GroundingBatch:
    attention: torch.Tensor
    hidden: list[torch.Tensor]
    paddings: list[Padding]
    masks: list[torch.Tensor]
    sam_embeddings: torch.Tensor | None = None
    sam_sizes: torch.Tensor | None = None
    names: list[str] = field(default_factory=list)

    def to(self, device) -> GroundingBatch:
        return GroundingBatch(
            attention=self.attention.to(device),
            hidden=[h.to(device) for h in self.hidden],
            paddings=self.paddings,
            masks=[m.to(device) for m in self.masks],
            sam_embeddings=None if self.sam_embeddings is None else self.sam_embeddings.to(device),
            sam_sizes=self.sam_sizes,
            names=self.names,
        )


@dataclass
class Prediction:
    coarse: list[torch.Tensor]  # per sample, logits [H, W]
    refined: list[torch.Tensor] | None  # per sample, logits [H, W]


class Grounder(nn.Module):
    def __init__(
        self,
        attention_channels: int,
        text_layers: int,
        text_width: int,
        head: HeadConfig,
        refiner: SamRefiner | None,
    ):
        super().__init__()
        self.text_layer_weights = nn.Parameter(torch.zeros(text_layers))  # softmax: equal at start
        self.input = head.input
        if head.input == "text":
            # The control: the expression's hidden states, no attention. A vector per expression,
            # the same in every cell, beside each cell's (x, y): the head can map words like "left"
            # or "top" to places, but cannot see where the object is.
            self.text_grid = nn.Linear(text_width, head.width)
            self.head = MaskHead(head.width + 2, head, normalise=False)
        else:
            self.head = MaskHead(attention_channels, head)
        self.refiner = refiner
        self.text_proj = (
            nn.Sequential(
                nn.Linear(text_width, text_width), nn.GELU(), nn.Linear(text_width, refiner.prompt_width)
            )
            if refiner is not None
            else None
        )

    def weights_from_elsewhere(self) -> tuple[str, ...]:
        """SAM's frozen parts: loaded from `sam.path` (or the seeded tiny SAM) whenever the model is
        built, so checkpoints leave them out (a real SAM ViT-H is 2.5 GB)."""
        if self.refiner is None:
            return ()
        frozen = ("vision_encoder.", "prompt_encoder.", "shared_image_embedding.")
        if not self.refiner.settings.train_decoder:
            frozen += ("mask_decoder.",)
        return tuple(f"refiner.sam.{part}" for part in frozen)

    def head_input(self, batch: GroundingBatch, weights: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w]: the attention maps, or (the text-only control) the expression's mean hidden
        state, projected and repeated over the same grid, with each cell's coordinates in [-1, 1]."""
        if self.input == "attention":
            return batch.attention
        sentences = torch.stack(
            [torch.einsum("k,knd->d", weights, hidden) / hidden.shape[1] for hidden in batch.hidden]
        )  # [N, D], the mean over each expression's tokens
        height, width = batch.attention.shape[-2:]
        text = self.text_grid(sentences)[:, :, None, None].expand(-1, -1, height, width)  # [N, W, h, w]
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, height, device=text.device),
            torch.linspace(-1, 1, width, device=text.device),
            indexing="ij",
        )
        where = torch.stack([xs, ys]).to(text.dtype).expand(len(text), -1, -1, -1)  # [N, 2, h, w]
        return torch.cat([text, where], dim=1)

    def predict(self, batch: GroundingBatch) -> Prediction:
        weights = self.text_layer_weights.softmax(0)
        square = self.head(self.head_input(batch, weights))  # [N, h*u, w*u] on the padded square
        coarse = [padding.crop(square[i]) for i, padding in enumerate(batch.paddings)]  # [H_i, W_i]
        if self.refiner is None:
            return Prediction(coarse, None)
        text = [
            self.text_proj(torch.einsum("k,knd->nd", weights, hidden)) for hidden in batch.hidden
        ]  # [n_i, P]
        refined = self.refiner(batch.sam_embeddings, batch.sam_sizes, coarse, text)
        return Prediction(coarse, refined)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        features: GroundingBatch = batch["features"]
        prediction = self.predict(features)
        losses = {"coarse_loss": _mean_loss(prediction.coarse, features.masks)}
        if prediction.refined is not None:
            losses["refined_loss"] = _mean_loss(prediction.refined, features.masks)
        return losses


def _mean_loss(logits: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """Dice + BCE per sample (sizes may differ), averaged over the batch."""
    pairs = zip(logits, masks, strict=True)
    return torch.stack([mask_loss(logit[None], mask[None]) for logit, mask in pairs]).mean()
