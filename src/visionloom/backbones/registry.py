"""Which adapter serves a checkpoint: a dict from config.json's `model_type`, and `load`."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import torch

import visionloom.backbones as package
from visionloom.backbones.base import REGISTERED, ImageTokenAdapter, place, read_json
from visionloom.backbones.tiny_parts import PRESETS
from visionloom.hub import CheckpointNotFound, checkpoint_path, split_hub_id

# Modules of the package that are not families (they import this one, or are the command line).
NOT_FAMILIES = {"cli", "doctor", "registry", "tiny"}

# Every module of the package is imported: a family's adapter registers itself when its class is
# defined (`ImageTokenAdapter.__init_subclass__`), and its preset with `tiny_parts.preset`.
for module in pkgutil.iter_modules(package.__path__):
    if module.name not in NOT_FAMILIES:
        importlib.import_module(f"{package.__name__}.{module.name}")

# config.json's `model_type` -> the adapter that serves it.
ADAPTERS: dict[str, type[ImageTokenAdapter]] = REGISTERED


def adapter_for(path: str | Path) -> type[ImageTokenAdapter]:
    """The adapter class for a checkpoint directory, from its config.json."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{path}: no config.json; expected a checkpoint directory written by save_pretrained"
        )
    model_type = read_json(config_file).get("model_type")
    if model_type not in ADAPTERS:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} is not supported; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def load(
    path_or_preset: str | Path,
    *,
    native_resolution: bool = False,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    **kwargs: Any,
) -> ImageTokenAdapter:
    """An adapter holding its model and processor: the one way in to the image-token layer.

    Args:
        path_or_preset: a local checkpoint directory (its `config.json`'s `model_type` picks the
            family), a hub id (`org/name`, from the Hugging Face cache or, online, downloaded as
            `transformers` would) or a preset name (`visionloom preset list`).
        native_resolution: feed images at their own size where the family allows it.
        dtype: None loads float32 on a CPU and the checkpoint's own dtype on a GPU; "auto",
            "float32", "float16", "bfloat16" or a torch dtype choose (see
            `ImageTokenAdapter.from_pretrained`).
        device: where the model goes (default: the CPU).
        revision: a branch, tag or commit of a hub id (default: main).
        **kwargs: passed to the preset builder or the model's `from_pretrained`.

    Returns:
        The family's `ImageTokenAdapter`.

    Raises:
        CheckpointNotFound: the name is neither a preset, a local directory nor a hub id in the
            cache or in reach (with `HF_HUB_OFFLINE=1` nothing is downloaded).
        ValueError: the checkpoint's family is not supported, or its files do not fit together.
    """
    name = str(path_or_preset)
    if name in PRESETS:
        adapter = build_preset(name, native_resolution=native_resolution, **kwargs)
        place(adapter.model, dtype, device)
        return adapter
    if split_hub_id(name) is None and not Path(name).expanduser().is_dir():
        raise CheckpointNotFound(
            f"{name!r} is neither a local checkpoint directory, a hub id (org/name) nor a preset "
            f"({', '.join(PRESETS)})"
        )
    directory = checkpoint_path(name, revision=revision)
    return adapter_for(directory).from_pretrained(
        directory, native_resolution=native_resolution, dtype=dtype, device=device, **kwargs
    )


def build_preset(
    name: str, *, seed: int = 0, native_resolution: bool = False, **overrides: Any
) -> ImageTokenAdapter:
    """A preset by name, with weights drawn from `seed`; `overrides` go to the model config."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    torch.manual_seed(seed)
    adapter = PRESETS[name](**overrides)
    if native_resolution:
        adapter = type(adapter)(adapter.model, adapter.processor, native_resolution=True)
    return adapter
