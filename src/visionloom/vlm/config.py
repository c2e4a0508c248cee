"""The scene VLM's pretraining settings: the dataclass a YAML config under configs/vlm/ fills."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from visionloom import config as config_io
from visionloom.config import NonNegativeFloat
from visionloom.engine.trainer import TrainConfig

# The tiny preset each family's scene VLM starts from.
FAMILY_PRESETS = {"llava": "tiny-llava", "qwen2.5-vl": "tiny-qwen2.5-vl"}


@dataclass
class PretrainConfig:
    family: Literal["llava", "qwen2.5-vl"] = "llava"
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=10000,
            batch_size=32,
            lr=1e-3,
            warmup_steps=500,
            restart_at=0.5,
            checkpoint_every=500,
            eval_every=500,
            log_every=20,
        )
    )
    cell_weight: NonNegativeFloat = 1.0  # weight of the per-token colour/shape warm-up loss (0: off)
    seed: int = 0


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> PretrainConfig:
    """A pretraining config by name (configs/vlm/NAME.yaml) or path, with `--set` overrides."""
    return config_io.load(PretrainConfig, config_io.find_config("vlm", name_or_path), overrides)
