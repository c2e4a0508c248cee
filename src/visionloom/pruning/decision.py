"""What a pruner decides: which image tokens stay, how much each counts, and where they leave.

A `Decision` is made by a pruner (`pruners.py`) and carried out by the image-token path
(`apply.py` before the language model, `prefill.py` inside it); it names nothing of either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from visionloom.backbones.types import VisionTokens


@dataclass
class DropStage:
    """One drop inside the language model: language-model layers `layer`.. run without the dropped tokens.

    Either `keep` fixes the kept indices per image (FastV, decided before), or `keep_ratio` keeps that
    share of each image's remaining candidates, ranked by the attention the query token gives them
    at layer `layer - 1` (PDrop), computed in the same prefill.
    """

    layer: int
    keep: list[torch.Tensor] | None = None
    keep_ratio: float | None = None


@dataclass
class Decision:
    """Per image (batch order): kept token indices (sorted) and/or soft weights; None means all / ones."""

    keep: list[torch.Tensor] | None = None  # long [k_i], indices into the image's placeholders
    weights: list[torch.Tensor] | None = None  # float [counts_i]
    # [T, D_text]: embeddings that replace the layer's (PruMerge's merged tokens), same layout.
    embeds: torch.Tensor | None = None
    from_layer: int = 0  # the first language-model layer without the dropped tokens
    # [B, S, D]: the full sequence entering `from_layer`, when the pruner already computed it.
    hidden_entering: torch.Tensor | None = None
    # PDrop: drops at later language-model layers, ranked while the prefill runs (see generate.py).
    stages: list[DropStage] = field(default_factory=list)

    def kept_counts(self, tokens: VisionTokens) -> list[int]:
        return [len(k) for k in self.keep] if self.keep is not None else list(tokens.counts)
