"""A retrieval experiment's settings: the dataclasses a YAML config under configs/retrieval/ fills.

Every value is checked against its declared type when the config is read (`visionloom.config`);
`visionloom config show retrieval/NAME` lists each key with what it allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from visionloom import config as config_io
from visionloom.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from visionloom.engine.trainer import TrainConfig


@dataclass
class LossConfig:
    sdm: NonNegativeFloat = 1.0
    itc: NonNegativeFloat = 0.0
    id: NonNegativeFloat = 1.0
    temperature: PositiveFloat = 0.02  # IRRA's: a fixed logit scale of 50
    enable_gen: bool = False
    gen_weight: NonNegativeFloat = 1.0


@dataclass
class VQFitConfig:
    image_size: tuple[int, int] = (96, 32)  # height x width the images are encoded at
    channels: tuple[int, ...] = (16, 32, 64, 64)  # one down block each; factor 2**(len - 1)
    latent_channels: int = 16
    codebook_size: int = 256
    layers_per_block: PositiveInt = 1  # resnet blocks per level (taming-transformers' VQGAN: 2)
    norm_groups: PositiveInt = 8  # GroupNorm groups; must divide every entry of channels
    steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    # Every this many steps, codes no latent chose since the last check move onto latents of the
    # batch (dead-code restart); none in the last 20% of steps, so the codes settle. 0 = off.
    restart_every: int = 20


@dataclass
class BackboneConfig:
    pretrained: str | None = None  # a checkpoint directory or hub id; null = the tiny random-weight config
    tiny: dict[str, Any] = field(default_factory=dict)  # overrides of the tiny config


@dataclass
class ModelConfig:
    architecture: Literal["baseline", "phase1", "phase2", "phase3", "phase3-t5gemma2", "phase4"] = "baseline"
    embed_dim: PositiveInt = 64
    image_size: tuple[PositiveInt, PositiveInt] = (384, 128)  # height x width fed to the vision tower
    vision: BackboneConfig = field(default_factory=BackboneConfig)
    text: BackboneConfig = field(default_factory=BackboneConfig)
    max_text_length: PositiveInt = 64
    # Recompute each backbone layer's activations in the backward pass instead of keeping them
    # (transformers' gradient_checkpointing_enable): less memory, about a third more compute.
    gradient_checkpointing: bool = False
    use_cls: bool = True  # phase 3/4: a learnable CLS in front of the image tokens
    text_mask_ratio: Fraction = 0.15  # phase 4: caption tokens masked for the generator
    image_mask_ratio: Fraction = 0.5  # phase 4: VQ-grid blocks of the image masked for the generator
    decoder_layers: PositiveInt = 2
    codebook_size: PositiveInt | None = None  # phase 4: filled from the VQ model when training starts
    code_grid: tuple[PositiveInt, PositiveInt] | None = None


@dataclass
class VQConfig:
    path: str | None = None  # a diffusers VQModel directory; null = DATA_ROOT/vq (what `vq fit` writes)
    online: bool = False  # encode VQ codes in the training step instead of reading the offline cache
    # What `visionloom retrieval vq fit DATA --config NAME` (and the demo) fit into DATA_ROOT/vq.
    fit: VQFitConfig = field(default_factory=VQFitConfig)


@dataclass
class DataConfig:
    # Training images: "flip" (horizontal, half the samples) or "irra" (IRRA's set: flip, pad 10 and
    # random crop, random erasing). With "irra" the offline VQ targets stay the codes of the clean
    # (flipped or not) image, so the generator reconstructs the person rather than the crop.
    augment: Literal["flip", "irra"] = "flip"
    # Identity-balanced batches of this many identities (IRRA's RandomIdentitySampler, which SDM
    # needs for positives in the batch); 0 = random batches.
    ids_per_batch: NonNegativeInt = 8


@dataclass
class RetrievalConfig:
    name: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vq: VQConfig = field(default_factory=VQConfig)


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> RetrievalConfig:
    """A shipped config by name (`visionloom config list`) or a YAML file, with overrides applied.

    Args:
        name_or_path: e.g. "phase4", or a path to a YAML file.
        overrides: "key=value" items as `--set` takes them (values read as YAML 1.2).

    Returns:
        The typed config, every value checked against its declared type and range.

    Raises:
        ValueError: an unknown name or key, or a value of the wrong type or out of range (the
            message names the file or the override, and the key).
    """
    path = config_io.find_config("retrieval", name_or_path)
    return config_io.load(RetrievalConfig, path, overrides)
