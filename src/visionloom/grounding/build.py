"""How each part of grounding is built from its config (`grounding/config.py`): the frozen VLM, SAM,
the splits, their frozen features, and the Grounder (mask head, text projection, SAM refiner)."""

from __future__ import annotations

from pathlib import Path

import torch

from visionloom.backbones import load
from visionloom.backbones.tiny_parts import PRESETS
from visionloom.data.errors import DatasetFormatError
from visionloom.data.refcoco import RefSample, group_by_split, read_refcoco
from visionloom.grounding.config import GroundingConfig
from visionloom.grounding.features import SampleFeatures, compute_features
from visionloom.grounding.model import Grounder
from visionloom.grounding.sam import SamRefiner, load_sam


def require_vlm(config: GroundingConfig) -> None:
    if config.vlm is None:
        raise ValueError(
            "no VLM: give --vlm DIR (a checkpoint from `visionloom vlm pretrain` or a real one), "
            "or a preset name for the random-weight control"
        )


def load_vlm(config: GroundingConfig):
    """The frozen VLM (`config.vlm`: a checkpoint directory or hub id, or a preset for a random-weight
    control drawn from `config.vlm_seed`), in eval mode with no gradients.

    Raises:
        ValueError: no VLM was given.
    """
    require_vlm(config)
    adapter = load(config.vlm, seed=config.vlm_seed) if config.vlm in PRESETS else load(config.vlm)
    adapter.model.eval().requires_grad_(False)
    return adapter


def build_refiner(config: GroundingConfig) -> SamRefiner | None:
    """SAM (`transformers`' `SamModel` from `config.sam.path`, or a tiny random one) wrapped to refine
    coarse masks, or None when `config.sam.enabled` is false."""
    return SamRefiner(*load_sam(config.sam), config.sam) if config.sam.enabled else None


def read_samples(config: GroundingConfig, data_root: str | Path, split: str | None) -> list[RefSample]:
    return read_refcoco(
        data_root,
        split,
        image_dir=config.image_dir,
        split_by=config.split_by,
        allow_pickle=config.allow_pickle,
    )


def read_splits(
    config: GroundingConfig, data_root: str | Path, required: tuple[str, ...] = ("train", "val")
) -> dict[str, list[RefSample]]:
    """Every split's samples, read once before any work.

    Args:
        config: the grounding config (image folder, split scheme, whether pickles may be read).
        data_root: a RefCOCO-style data set (refs, `instances.json`, images).
        required: splits that must be present.

    Returns:
        Samples per split name.

    Raises:
        DatasetFormatError: a required split is missing (the message names the splits present),
            or an entry is malformed (named with its ref and annotation).
    """
    by_split = group_by_split(read_samples(config, data_root, None))
    missing = [split for split in required if split not in by_split]
    if missing:
        raise DatasetFormatError(
            f"{data_root}: no {' or '.join(repr(m) for m in missing)} split (training needs train, and val "
            f"to select on); splits present: {sorted(by_split)}"
        )
    return by_split


def split_features(
    config, adapter, refiner, data_root: Path, split: str, progress: bool, samples=None
) -> list[SampleFeatures]:
    """The frozen VLM's features of `samples` (else of the split's samples), computed once.

    Each sample's expression attention to the image-token grid, stacked over layers and heads
    ([layers * heads, h, w]), and its hidden states, with the config's prompt and merge.
    """
    if samples is None:
        samples = read_samples(config, data_root, split)
    return compute_features(
        adapter,
        samples,
        refiner,
        prompt=config.prompt,
        merge=config.merge,
        text_layers=config.text_layers,
        image_side=config.image_side,
        description=split,
        progress=progress,
    )


def build_model(config: GroundingConfig, features: list[SampleFeatures], refiner) -> Grounder:
    """The trainable grounder (U-Net head, text projection, SAM's mask decoder), sized from the
    features' attention channels and hidden width, weights drawn from `config.train.seed`."""
    channels, text_width = features[0].attention.shape[0], features[0].hidden.shape[-1]
    torch.manual_seed(config.train.seed)
    return Grounder(channels, config.text_layers, text_width, config.head, refiner)


def select_key(config: GroundingConfig) -> str:
    return "refined_cIoU" if config.sam.enabled else "coarse_cIoU"
