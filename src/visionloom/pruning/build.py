"""The pruners by name, built from the config (`pruning/config.py`): `make_pruner(name, config, adapter, texts)`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.data.scenes import SceneText
from visionloom.pruning.config import PruneConfig
from visionloom.pruning.pruners import PDrop, Pruner, RandomPruner, TextAttention, TowerAttention, VisionZip
from visionloom.pruning.train import train_scorer


def _learned(
    config: PruneConfig, adapter: ImageTokenAdapter, train_texts: list[SceneText], work_dir: Path | None
) -> Pruner:
    run_dir = work_dir / "scorer" if work_dir is not None else None
    return train_scorer(adapter, train_texts, config.scorer, config.seed, run_dir)


# Every pruner `prune eval` runs, built from the config (its settings live only there); a pruner
# that trains writes its run under `work_dir`.
PRUNERS: dict[str, Callable[[PruneConfig, ImageTokenAdapter, list[SceneText], Path | None], Pruner]] = {
    "random": lambda config, adapter, texts, work_dir: RandomPruner(config.seed),
    "tower-attention": lambda config, adapter, texts, work_dir: TowerAttention(config.tower_block),
    "tower-attention-merge": lambda config, adapter, texts, work_dir: TowerAttention(
        config.tower_block, merge=True
    ),
    "text-attention": lambda config, adapter, texts, work_dir: TextAttention(config.text_layer),
    "visionzip": lambda config, adapter, texts, work_dir: VisionZip(config.tower_block),
    "pdrop": lambda config, adapter, texts, work_dir: PDrop(config.pdrop_layers),
    "learned": _learned,
}


def make_pruner(
    name: str,
    config: PruneConfig,
    adapter: ImageTokenAdapter,
    train_texts: list[SceneText],
    work_dir: Path | None = None,
) -> Pruner:
    """A pruner by name, its settings taken from the pruning config.

    Args:
        name: a key of `PRUNERS` (random, tower-attention, tower-attention-merge, text-attention,
            visionzip, pdrop, learned).
        config: the pruning config (tower block, FastV's layer, PDrop's layers, the scorer's
            training settings, the seed).
        adapter: the image-token layer of the VLM (the learned scorer trains on it, frozen).
        train_texts: training questions for the learned scorer (unused by the others).
        work_dir: where a pruner that trains writes its run (`work_dir/scorer`).

    Raises:
        ValueError: an unknown name.
    """
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}")
    return PRUNERS[name](config, adapter, train_texts, work_dir)
