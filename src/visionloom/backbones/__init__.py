"""The image-token layer: one adapter per VLM family over the real `transformers` classes.

adapter = visionloom.backbones.load("tiny-llava")        # or a local checkpoint directory
inputs = adapter.build_inputs([image], ["<image> what is this?"])
tokens = adapter.encode_images(inputs)                   # one vision-tower pass
output = adapter.forward(inputs, tokens, output_attentions=True)
"""

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.registry import ADAPTERS, adapter_for, load
from visionloom.backbones.types import ImageGeometry, LayerOutput, MultimodalInputs, VisionTokens

__all__ = [
    "ADAPTERS",
    "ImageGeometry",
    "ImageTokenAdapter",
    "ImageTokenMismatch",
    "LayerOutput",
    "MultimodalInputs",
    "VisionTokens",
    "adapter_for",
    "load",
]
