"""A grounding experiment's settings: the dataclasses a YAML config under configs/grounding/ fills.

Every value is checked against its declared type when the config is read (`visionloom.config`);
`visionloom config show grounding/NAME` lists each key with what it allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from visionloom import config as config_io
from visionloom.config import PositiveInt
from visionloom.data.scenes import DEFAULT_PROMPT
from visionloom.engine.trainer import TrainConfig


@dataclass
class HeadConfig:
    width: PositiveInt = 32
    upsample: Literal[1, 2, 4, 8, 16] = 4  # output grid = token grid x this (a power of two)
    # attention: the expression's attention maps (F-LMM). text: the control that sees no attention,
    # only the expression's hidden states, repeated over the grid.
    input: Literal["attention", "text"] = "attention"


@dataclass
class SamSettings:
    enabled: bool = True
    path: str | None = None  # a local SAM checkpoint directory; None: a tiny random-weight SAM
    multimask: bool = True
    train_decoder: bool = True
    seed: int = 0


@dataclass
class GroundingConfig:
    name: str = "grounding"
    vlm: str | None = None  # a checkpoint directory or hub id, or a preset name (random weights: the control)
    vlm_seed: int = 0  # weights of a preset
    prompt: str = DEFAULT_PROMPT
    merge: Literal["mean", "max"] = "mean"  # how attention is merged over the expression's tokens
    text_layers: PositiveInt = 2  # hidden states of the last K layers, weighted, go to text_proj
    image_dir: str | None = None  # images, when not DATA/images (COCO's train2014 for RefCOCO)
    # Resize the padded square to this side before the VLM's processor. Needed where the processor
    # keeps the image's size (Qwen2.5-VL): otherwise images of different sizes get different token
    # grids, which one head batch cannot hold. None: the processor decides.
    image_side: PositiveInt | None = None
    split_by: str | None = (
        None  # which refs(<split_by>) file: unc (RefCOCO, RefCOCO+), umd or google (RefCOCOg)
    )
    allow_pickle: bool = False  # read a pickled refs(...).p; unpickling runs code, so only for trusted files
    head: HeadConfig = field(default_factory=HeadConfig)
    sam: SamSettings = field(default_factory=SamSettings)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=400, batch_size=32, lr=1e-3, warmup_steps=30)
    )


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> GroundingConfig:
    """A shipped config by name (`visionloom config list`) or a YAML file, with overrides applied.

    Args:
        name_or_path: e.g. "refcoco/llava-1.5-7b", or a path to a YAML file.
        overrides: "key=value" items as `--set` takes them (values read as YAML 1.2).

    Returns:
        The typed config, every value checked against its declared type and range.

    Raises:
        ValueError: an unknown name or key, or a value of the wrong type or out of range (the
            message names the file or the override, and the key).
    """
    return config_io.load(GroundingConfig, config_io.find_config("grounding", name_or_path), overrides)
