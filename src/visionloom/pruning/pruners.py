"""Pruners: given an image's tokens, which to keep (or how much each counts).

One interface (`Pruner`): `decide(adapter, inputs, tokens, keep_ratio, *, query_positions=None)
-> Decision`. Layout tokens (LLaVA-NeXT newlines) are never candidates; a ratio keeps
`ceil(ratio * candidates)` of the rest, at least one. `query_positions` is each sample's last prompt
token, for a pruner that ranks from the text (the answer may follow, teacher-forced); the others
ignore it. A pruner that changes embeddings (merging) returns them in the Decision.

- `KeepAll`: the invariant's reference (bit-identical logits).
- `RandomPruner`: the floor.
- `TowerAttention`: vision-side importance (VisionZip / PruMerge style): the attention each token
  receives at one vision-tower block, recomputed from the one pass by each family's
  `tower_attention_scores`. CLIP towers use the class token's row, SigLIP towers the mean over
  queries, and Qwen2.5-VL a full-attention block's scores averaged over each 2x2 merge unit,
  so pruning happens after the merger. With `merge=True` each dropped token is averaged into its
  most similar kept token.
- `TextAttention`: language-side (FastV). Layers 0..K run on the full sequence. The attention
  image tokens receive there from the last prompt token, at layer K, ranks them. Layers K+1..
  then run on the kept positions of the hidden state (the decision's `from_layer`).
- `PDrop`: language-side in stages (several layers), ranked inside the prefill.
- `LearnedScorer`: a small network over image-token embeddings, trained with the VLM frozen.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.types import MultimodalInputs, VisionTokens
from visionloom.pruning.apply import attention_weights_of, last_real_positions, shallow_pass
from visionloom.pruning.decision import Decision, DropStage


class Pruner(Protocol):
    """What every pruner is: a name and a `decide` that turns one batch into a `Decision`."""

    name: str

    def decide(
        self,
        adapter: ImageTokenAdapter,
        inputs: MultimodalInputs,
        tokens: VisionTokens,
        keep_ratio: float,
        *,
        query_positions: torch.Tensor | None = None,
    ) -> Decision:
        """Decide which image tokens the language model keeps.

        Args:
            adapter: the image-token layer of the VLM.
            inputs: from `adapter.build_inputs`.
            tokens: from `adapter.encode_images` (one tower pass; pruners reuse it).
            keep_ratio: the share of each image's prunable tokens to keep, in (0, 1]; layout
                tokens (row newlines) are always kept.
            query_positions: LongTensor [B], the position whose attention ranks the tokens
                (the last prompt token) when the inputs also hold the answer; None: each sample's
                last real token.

        Returns:
            The `Decision`: kept indices per image (sorted), and/or soft weights, merged
            embeddings, or drops inside the language model.

        Raises:
            ValueError: a keep ratio outside (0, 1], or inputs the pruner cannot rank.
        """
        ...


def candidates(adapter: ImageTokenAdapter, tokens: VisionTokens, image: int) -> torch.Tensor:
    """Indices of an image's placeholders a pruner may drop (all but layout tokens)."""
    structural = set(adapter.structural_offsets(tokens.geometries[image]))
    return torch.tensor([i for i in range(tokens.counts[image]) if i not in structural], dtype=torch.long)


def keep_top(adapter, tokens: VisionTokens, scores: list[torch.Tensor], keep_ratio: float) -> Decision:
    """Keep the highest-scoring candidates of each image, plus its layout tokens, in raster order."""
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio {keep_ratio} must be in (0, 1]")
    keep = []
    for image, image_scores in enumerate(scores):
        pool = candidates(adapter, tokens, image)
        if image_scores.shape != (tokens.counts[image],):
            raise ValueError(
                f"image {image}: {tuple(image_scores.shape)} scores for {tokens.counts[image]} tokens"
            )
        if image_scores[pool].isnan().any():
            raise ValueError(f"image {image}: NaN scores on tokens a pruner may drop")
        count = max(1, math.ceil(keep_ratio * len(pool)))
        chosen = pool[image_scores[pool].float().topk(count).indices]
        layout = torch.tensor(adapter.structural_offsets(tokens.geometries[image]), dtype=torch.long)
        keep.append(torch.cat([chosen.cpu(), layout]).sort().values)
    return Decision(keep=keep)


class KeepAll:
    """Every token kept: the reference every pruner is compared with (bit-identical to the model)."""

    name = "keep-all"

    def decide(self, adapter, inputs, tokens, keep_ratio: float = 1.0, *, query_positions=None) -> Decision:
        return Decision(keep=[torch.arange(count) for count in tokens.counts])


class RandomPruner:
    """Tokens kept at random (seeded): the floor a pruner has to clear."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def decide(self, adapter, inputs, tokens, keep_ratio: float, *, query_positions=None) -> Decision:
        generator = torch.Generator().manual_seed(self.seed)
        scores = [torch.rand(count, generator=generator) for count in tokens.counts]
        return keep_top(adapter, tokens, scores, keep_ratio)


# ---------------------------------------------------------------------------------------- vision side
def average_into(
    embeds: torch.Tensor, targets: torch.Tensor, sources: torch.Tensor, compare: torch.Tensor | None = None
) -> torch.Tensor:
    """[k, D]: each source token averaged into its most similar target, every target the mean of
    itself and the sources it took. The merging step of PruMerge and of VisionZip's contextual
    tokens. embeds [N, D]; targets [k] and sources [m] index into it. Similarity is the cosine of
    `compare` [N, C] (VisionZip: the tower's keys), or of the embeddings themselves."""
    kept = embeds[targets]  # [k, D], a copy
    if len(sources) == 0:
        return kept
    normalise = nn.functional.normalize
    compare = embeds if compare is None else compare.to(embeds.device)
    similarity = normalise(compare[sources].float(), dim=-1) @ normalise(compare[targets].float(), dim=-1).T
    owner = similarity.argmax(-1)  # [m]
    sums = kept.index_add(0, owner, embeds[sources])
    counts = torch.ones(len(kept), device=embeds.device).index_add(
        0, owner, torch.ones(len(owner), device=embeds.device)
    )
    return sums / counts.unsqueeze(-1)


class TowerAttention:
    """Keep the tokens the vision tower attends to most, at one tower block (VisionZip / PruMerge style)."""

    name = "tower-attention"

    def __init__(self, block: int | None = None, merge: bool = False):
        self.block, self.merge = block, merge

    def scores(self, adapter: ImageTokenAdapter, tokens: VisionTokens) -> list[torch.Tensor]:
        scores = adapter.tower_attention_scores(tokens, self.block)
        for image, image_scores in enumerate(scores):
            if image_scores.shape != (tokens.counts[image],):
                raise ValueError(
                    f"{adapter.family}, image {image}: {tuple(image_scores.shape)} tower scores for "
                    f"{tokens.counts[image]} tokens"
                )
        return [image_scores.detach().float().cpu() for image_scores in scores]

    def decide(self, adapter, inputs, tokens, keep_ratio: float, *, query_positions=None) -> Decision:
        decision = keep_top(adapter, tokens, self.scores(adapter, tokens), keep_ratio)
        if self.merge:
            decision.embeds = self.merged_embeds(adapter, tokens, decision)
        return decision

    def merged_embeds(self, adapter, tokens: VisionTokens, decision: Decision) -> torch.Tensor:
        """[T, D]: PruMerge's step, every dropped embedding averaged into its most similar kept image token.

        Layout tokens (LLaVA-NeXT's newlines) are kept but take no merges: they are not image content.
        """
        merged = []
        for image, embeds in enumerate(tokens.per_image()):
            structural = list(adapter.structural_offsets(tokens.geometries[image]))
            keep = decision.keep[image].to(embeds.device)
            content = keep[~torch.isin(keep, torch.tensor(structural, dtype=torch.long, device=keep.device))]
            dropped = torch.ones(len(embeds), dtype=torch.bool, device=embeds.device)
            dropped[keep] = False
            full = embeds.clone()
            full[content] = average_into(embeds, content, dropped.nonzero().squeeze(1)).to(full.dtype)
            merged.append(full)
        return torch.cat(merged)


class VisionZip:
    """VisionZip (Yang et al., CVPR 2025): dominant tokens, plus contextual tokens merged from the rest.

    Of the tokens a ratio keeps, `dominant_share` (VisionZip's 54 of 64 at its smallest budget) are
    the ones the tower attends to most (`TowerAttention`'s scores). The remaining tokens are merged
    into the rest of the budget: targets taken at even intervals among them (in raster order), every
    other remaining token assigned to its most similar target, and each target replaced by its
    group's mean. Similarity is the cosine of the tokens' attention keys at the scoring block, as
    VisionZip compares them (`tower_keys`: recomputed from the same tower pass, averaged over merged
    or pooled patches). The groups average the projected embeddings the language model receives
    (VisionZip averages the tower's features before its linear projector; LLaVA's two-layer
    projector is not linear, so the two differ there). At ratio 1 every token is dominant and
    nothing is merged, so keep-all holds bit for bit.
    """

    name = "visionzip"

    def __init__(self, block: int | None = None, dominant_share: float = 54 / 64):
        if not 0 < dominant_share <= 1:
            raise ValueError(f"dominant_share {dominant_share} must be in (0, 1]")
        self.tower, self.dominant_share = TowerAttention(block), dominant_share

    def decide(self, adapter, inputs, tokens, keep_ratio: float, *, query_positions=None) -> Decision:
        if not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio {keep_ratio} must be in (0, 1]")
        scores = self.tower.scores(adapter, tokens)
        keys = adapter.tower_keys(tokens, self.tower.block) if keep_ratio < 1 else [None] * len(scores)
        keep, merged, changed = [], [], False
        for image, embeds in enumerate(tokens.per_image()):
            pool = candidates(adapter, tokens, image)
            budget = max(1, math.ceil(keep_ratio * len(pool)))
            dominant_count = budget if budget == len(pool) else max(1, round(self.dominant_share * budget))
            ranked = pool[scores[image][pool].float().argsort(descending=True, stable=True)]
            dominant, rest = ranked[:dominant_count], ranked[dominant_count:].sort().values
            context_count = min(budget - dominant_count, len(rest))
            full = embeds
            targets = rest[:0]
            if context_count > 0:
                picks = torch.linspace(0, len(rest) - 1, context_count).round().long().unique()
                targets = rest[picks]
                others = rest[~torch.isin(rest, targets)]
                full, changed = embeds.clone(), True
                full[targets] = average_into(embeds, targets, others, keys[image]).to(full.dtype)
            layout = torch.tensor(adapter.structural_offsets(tokens.geometries[image]), dtype=torch.long)
            keep.append(torch.cat([dominant.cpu(), targets.cpu(), layout]).sort().values)
            merged.append(full)
        return Decision(keep=keep, embeds=torch.cat(merged) if changed else None)


# ---------------------------------------------------------------------------------------- language side
class TextAttention:
    """FastV: layers 0..K on every token; the last prompt token's attention at layer K ranks the image
    tokens; layers K+1.. run on the kept ones only.

    The ranking row is each sample's last real token, as at generation time, when the input is
    the prompt. When the answer is teacher-forced (evaluation), pass `query_positions`, the last
    prompt token of each sample. Otherwise the ranking would read the answer.
    """

    name = "text-attention"

    def __init__(self, layer: int):  # FastV's K (2 on LLaVA-1.5-7B; the config holds the default)
        self.layer = layer

    @torch.no_grad()
    def decide(
        self, adapter, inputs, tokens, keep_ratio: float, *, query_positions: torch.Tensor | None = None
    ) -> Decision:
        adapter.refuse_layer_drops()  # before the shallow pass, not after it
        scores, hidden = self.scores_and_hidden(adapter, inputs, tokens, query_positions)
        decision = keep_top(adapter, tokens, scores, keep_ratio)
        return Decision(keep=decision.keep, from_layer=self.layer + 1, hidden_entering=hidden)

    @torch.no_grad()
    def scores(
        self,
        adapter,
        inputs: MultimodalInputs,
        tokens: VisionTokens,
        query_positions: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        return self.scores_and_hidden(adapter, inputs, tokens, query_positions)[0]

    def scores_and_hidden(
        self, adapter, inputs, tokens, query_positions: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The shallow pass (layers 0..K): per image the scores, and the hidden state entering K+1."""
        layers = len(adapter.language_module.layers)
        if not 0 <= self.layer < layers - 1:
            raise ValueError(
                f"text-attention ranks at layer {self.layer} and drops tokens after it: with {layers} "
                f"language-model layers that layer must be 0..{layers - 2}"
            )
        adapter.use_eager_attention()  # attention weights exist only with eager attention
        with attention_weights_of(adapter, self.layer) as attention:
            _, hidden = shallow_pass(adapter, inputs, tokens, self.layer + 1)
        if query_positions is None:
            query_positions = last_real_positions(inputs.attention_mask)  # [B], left or right padding
        scores = []
        for sample, positions in inputs.placeholders():
            row = int(query_positions[sample])
            if row <= int(positions[-1]):
                raise ValueError(f"sample {sample}: the ranking position {row} is not after its image")
            weights = attention["weights"][
                sample, :, row, positions.to(attention["weights"].device)
            ]  # [heads, n]
            scores.append(weights.mean(0).float().cpu())
        return scores, hidden


class PDrop:
    """PDrop (Xing et al., "PyramidDrop", CVPR 2025): image tokens dropped in stages inside the
    language model. At each stage layer the last instruction token's attention at the layer before
    ranks the image tokens still present, and a share `lambda` of them goes on; the ranking runs
    inside the prefill (`prefill.py`), between the stretches, with no second pass.

    `layers`: the stage layers (PDrop uses 8, 16, 24 of LLaVA-1.5-7B's 32, lambda 0.5); default a
    quarter, half and three quarters of the model's depth. A keep ratio r is the share left after the
    last stage, so lambda = r ** (1 / stages); the FLOPs estimate counts the fuller early stretches.
    At r = 1 every stage keeps everything and the logits are the model's, bit for bit.
    """

    name = "pdrop"

    def __init__(self, layers: list[int] | None = None):
        self.layers = layers

    def stage_layers(self, adapter: ImageTokenAdapter) -> list[int]:
        depth = len(adapter.language_module.layers)
        default = {round(depth * share) for share in (0.25, 0.5, 0.75)} & set(range(1, depth))
        layers = self.layers or sorted(default)
        if layers != sorted(set(layers)) or layers[0] < 1 or layers[-1] >= depth:
            raise ValueError(
                f"pdrop layers {layers}: increasing layers within 1..{depth - 1} (the language model has {depth})"
            )
        return layers

    def decide(self, adapter, inputs, tokens, keep_ratio: float, *, query_positions=None) -> Decision:
        if not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio {keep_ratio} must be in (0, 1]")
        layers = self.stage_layers(adapter)
        share = keep_ratio ** (1 / len(layers))
        return Decision(stages=[DropStage(layer=layer, keep_ratio=share) for layer in layers])


# ---------------------------------------------------------------------------------------- learned
class LearnedScorer(nn.Module):
    """An MLP scoring each image token from its embedding, trained with the VLM frozen.

    Soft in training (every token weighted by sigmoid(score), so the scorer gets gradients), hard
    top-k at inference.
    """

    name = "learned"

    def __init__(self, width: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, tokens: VisionTokens) -> list[torch.Tensor]:
        return [self.net(embeds.float()).squeeze(-1) for embeds in tokens.per_image()]

    def soft(self, tokens: VisionTokens) -> Decision:
        """Training: every token stays, weighted by sigmoid(score), so the scorer gets gradients."""
        return Decision(weights=[score.sigmoid() for score in self(tokens)])

    @torch.no_grad()
    def decide(self, adapter, inputs, tokens, keep_ratio: float, *, query_positions=None) -> Decision:
        return keep_top(adapter, tokens, [s.cpu() for s in self(tokens)], keep_ratio)
