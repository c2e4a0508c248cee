"""The learned pruner's training: an MLP scorer over image-token embeddings, the VLM frozen.

During training every token stays, weighted by sigmoid(score), so the scorer gets gradients from
the answer loss; a budget term pulls the mean weight toward the keep ratio. At inference the
scorer keeps the top-k (`LearnedScorer.decide`).
"""

from __future__ import annotations

import torch

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.data.scenes import SceneText
from visionloom.pruning.apply import forward_pruned
from visionloom.pruning.build import ScorerConfig
from visionloom.pruning.pruners import LearnedScorer
from visionloom.vlm.answers import AnswerCollate


def train_scorer(
    adapter: ImageTokenAdapter, texts: list[SceneText], config: ScorerConfig, seed: int
) -> LearnedScorer:
    """Soft weights during training (the VLM frozen); the budget term keeps them from all staying at one."""
    torch.manual_seed(seed)
    scorer = LearnedScorer(adapter.text_width)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=config.lr)
    collate = AnswerCollate(adapter)
    generator = torch.Generator().manual_seed(seed)
    adapter.model.requires_grad_(False)
    for _ in range(config.steps):
        picks = torch.randint(0, len(texts), (config.batch_size,), generator=generator).tolist()
        batch = collate([texts[i] for i in picks])
        with torch.no_grad():
            tokens = adapter.encode_images(batch["inputs"])
        decision = scorer.soft(tokens)
        logits = forward_pruned(adapter, batch["inputs"], tokens, decision).logits
        labels = batch["answer_labels"]
        answer = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
        )
        budget = (torch.cat(decision.weights).mean() - config.keep_ratio) ** 2
        loss = answer + config.budget_weight * budget
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return scorer.eval()
