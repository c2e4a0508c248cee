"""The learned pruner's training: an MLP scorer over image-token embeddings, the VLM frozen.

During training every token stays, weighted by sigmoid(score), so the scorer gets gradients from
the answer loss; a budget term pulls the mean weight toward the keep ratio. At inference the
scorer keeps the top-k (`LearnedScorer.decide`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.data.scenes import SceneText
from visionloom.engine.run import open_run
from visionloom.engine.samplers import Items, RandomBatches
from visionloom.engine.trainer import TrainConfig, Trainer
from visionloom.pruning.config import ScorerConfig
from visionloom.pruning.prefill import forward_pruned
from visionloom.pruning.pruners import LearnedScorer
from visionloom.vlm.answers import AnswerCollate, answer_loss


class ScorerTraining(nn.Module):
    """The scorer as the trainer sees it: forward(batch) -> its two losses, the VLM frozen.

    The VLM is held as a plain attribute, not a submodule: it is neither optimised nor written
    into the scorer's checkpoints.
    """

    def __init__(self, adapter: ImageTokenAdapter, config: ScorerConfig):
        super().__init__()
        self.adapter, self.config = adapter, config
        self.scorer = LearnedScorer(adapter.text_width)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            tokens = self.adapter.encode_images(batch["inputs"])
        decision = self.scorer.soft(tokens)
        logits = forward_pruned(self.adapter, batch["inputs"], tokens, decision).logits
        budget = (torch.cat(decision.weights).mean() - self.config.keep_ratio) ** 2
        return {
            "answer_loss": answer_loss(logits, batch["answer_labels"]),
            "budget_loss": self.config.budget_weight * budget,
        }


def train_scorer(
    adapter: ImageTokenAdapter,
    texts: list[SceneText],
    config: ScorerConfig,
    seed: int,
    run_dir: Path | None = None,
) -> LearnedScorer:
    """Train the scorer through the one Trainer; its run (checkpoints, log) goes to `run_dir`, which
    is replaced, or to a temporary folder."""
    adapter.model.requires_grad_(False)
    torch.manual_seed(seed)
    model = ScorerTraining(adapter, config)
    train = TrainConfig(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_steps=0,
        grad_clip=0.0,
        checkpoint_every=config.steps,
        log_every=max(1, config.steps // 10),
        seed=seed,
    )
    sampler = RandomBatches(len(texts), config.batch_size, seed)
    loader = DataLoader(Items(texts), batch_sampler=sampler, collate_fn=AnswerCollate(adapter))
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(run_dir) if run_dir is not None else Path(scratch)
        with open_run(directory, resume=False, overwrite=True) as run:
            run.begin()
            Trainer(model, loader, train, directory, progress=False).fit()
    return model.scorer.eval()
