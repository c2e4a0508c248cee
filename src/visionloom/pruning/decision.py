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
    """One drop inside the language model: layers `layer`.. run without the dropped tokens.

    Attributes:
        layer: the first language-model layer without the dropped tokens.
        keep: per image, LongTensor [k_i] of kept indices, fixed beforehand (FastV); or None.
        keep_ratio: the share of each image's remaining tokens to keep, ranked by the attention
            the query token gives them at layer `layer - 1`, computed inside the same prefill
            (PDrop); or None.
    """

    layer: int
    keep: list[torch.Tensor] | None = None
    keep_ratio: float | None = None


@dataclass
class Decision:
    """What a pruner decided for a batch; every list is per image, in batch order.

    Attributes:
        keep: LongTensor [k_i] of kept indices into each image's placeholders, sorted; None keeps
            all.
        weights: float [counts_i] soft weights on each image's embeddings; None is all ones.
        embeds: [T, D_text] embeddings that replace the layer's (PruMerge's and VisionZip's merged
            tokens), in the same layout; or None.
        from_layer: the first language-model layer without the dropped tokens (0: dropped before
            the language model; FastV: K + 1).
        hidden_entering: [B, S, D_text], the full sequence entering `from_layer`, when the pruner
            already computed it; or None.
        stages: later drops inside the language model (PDrop), ranked while the prefill runs.
    """

    keep: list[torch.Tensor] | None = None
    weights: list[torch.Tensor] | None = None
    embeds: torch.Tensor | None = None
    from_layer: int = 0
    hidden_entering: torch.Tensor | None = None
    stages: list[DropStage] = field(default_factory=list)

    def kept_counts(self, tokens: VisionTokens) -> list[int]:
        """Image tokens each image keeps (all of them when `keep` is None)."""
        return [len(k) for k in self.keep] if self.keep is not None else list(tokens.counts)
