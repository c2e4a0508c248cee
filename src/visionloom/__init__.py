"""visionloom: image tokens into vision-language models, correctly, and three research systems on top.

The public API, imported on first use so that `import visionloom` (and the command line's start)
stays fast:

    load(path_or_id_or_preset)      an `ImageTokenAdapter`: the model, its processor, the layer
    build_preset(name, seed=0)      a tiny random-weight model of a family (`visionloom preset list`)
    checkpoint_path(name)           a local directory or hub id -> the checkpoint's directory
    wrap(model, processor, ...)     transformers' `generate` with image tokens pruned
    ImageTokenAdapter, MultimodalInputs, VisionTokens, ImageGeometry, ImageTokenMismatch
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# name -> the module that defines it
_EXPORTS = {
    "load": "visionloom.backbones.registry",
    "build_preset": "visionloom.backbones.registry",
    "ImageTokenAdapter": "visionloom.backbones.base",
    "ImageTokenMismatch": "visionloom.backbones.checks",
    "MultimodalInputs": "visionloom.backbones.types",
    "VisionTokens": "visionloom.backbones.types",
    "ImageGeometry": "visionloom.backbones.types",
    "checkpoint_path": "visionloom.hub",
    "wrap": "visionloom.pruning.dropin",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'visionloom' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
