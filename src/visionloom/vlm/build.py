"""How the scene VLM is built from its config (`vlm/config.py`): a tiny preset of a real family, random weights."""

from __future__ import annotations

from visionloom.backbones import load
from visionloom.backbones.base import ImageTokenAdapter
from visionloom.vlm.config import FAMILY_PRESETS, PretrainConfig


def build_vlm(config: PretrainConfig) -> ImageTokenAdapter:
    """The family's tiny preset with weights drawn from `config.seed`."""
    return load(FAMILY_PRESETS[config.family], seed=config.seed)
