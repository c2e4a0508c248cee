"""A pruning evaluation's settings: the dataclasses a YAML config under configs/pruning/ fills.

Every value is checked against its declared type when the config is read (`visionloom.config`);
`visionloom config show pruning/NAME` lists each key with what it allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from visionloom import config as config_io
from visionloom.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ShareOfOne


@dataclass
class ScorerConfig:
    steps: PositiveInt = 200
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 1e-3
    budget_weight: NonNegativeFloat = (
        1.0  # pulls the mean soft weight toward the keep ratio being trained for
    )
    keep_ratio: ShareOfOne = 0.25


# The pruners `prune eval` can run, by name (`PRUNERS` below builds each).
PrunerName = Literal[
    "random", "tower-attention", "tower-attention-merge", "visionzip", "text-attention", "pdrop", "learned"
]


@dataclass
class PruneConfig:
    name: str = "scenes"
    vlm: str | None = None  # a checkpoint directory (from `vlm pretrain`, or a real VLM) or a hub id
    # scenes: the synthetic scene questions, teacher-forced; pope / gqa: the released benchmarks
    # (pruning/benchmarks/), answered by generating.
    benchmark: Literal["scenes", "pope", "gqa"] = "scenes"
    subset: Literal["random", "popular", "adversarial"] = "random"  # POPE's subset
    images: str | None = None  # the benchmark's image folder, when not where its release puts it
    prompt: Literal["chat", "plain"] = "chat"  # the checkpoint's chat template, or "<image>\n{question}"
    max_new_tokens: PositiveInt = 128  # as LLaVA's evaluation scripts; decoding stops at the end token
    split: str = "test"
    questions: str | None = None  # a JSON list of {"image", "question", "answer"}; None: the scenes' qa.json
    max_questions: PositiveInt = 400
    batch_size: PositiveInt = 32
    keep_ratios: list[ShareOfOne] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.11])
    pruners: list[PrunerName] = field(default_factory=lambda: list(get_args(PrunerName)))  # all of them
    # FastV's K: rank at this language-model layer, drop after it. FastV uses K=2 on LLaVA-1.5-7B;
    # the tiny scene VLMs have 2 layers, so 0.
    text_layer: NonNegativeInt = 0
    # PDrop's stage layers (8, 16, 24 on LLaVA-1.5-7B); None: a quarter, half and three quarters of the depth.
    pdrop_layers: list[PositiveInt] | None = None
    tower_block: int | None = None  # vision-side pruner: score at this tower block; None: the family's
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    seed: int = 0


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> PruneConfig:
    return config_io.load(PruneConfig, config_io.find_config("pruning", name_or_path), overrides)
