"""The image-token layer: one adapter per VLM family over the real `transformers` classes.

adapter = visionloom.backbones.load("tiny-llava")        # or a local checkpoint directory
inputs = adapter.build_inputs([image], ["<image> what is this?"])
tokens = adapter.encode_images(inputs)                   # one vision-tower pass
output = adapter.forward(inputs, tokens, output_attentions=True)
"""

import importlib

# Loaded on first use: importing the package (its command-line module does, for every `--help`)
# must not import transformers, which takes seconds.
_EXPORTS = {
    "ADAPTERS": "visionloom.backbones.registry",
    "ImageGeometry": "visionloom.backbones.types",
    "ImageTokenAdapter": "visionloom.backbones.base",
    "ImageTokenMismatch": "visionloom.backbones.checks",
    "LayerOutput": "visionloom.backbones.types",
    "MultimodalInputs": "visionloom.backbones.types",
    "VisionTokens": "visionloom.backbones.types",
    "adapter_for": "visionloom.backbones.registry",
    "load": "visionloom.backbones.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'visionloom.backbones' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return [*globals(), *__all__]
