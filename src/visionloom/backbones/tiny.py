"""Tiny random-weight presets of each supported family, by name: `build_preset("tiny-llava")`.

Each preset is the real `transformers` model class at a size that runs on two CPU cores, with its
real processor class and an offline tokenizer carrying the family's real special tokens. A family
defines its preset in its own module (`tiny_<family>`, registered with `tiny_parts.preset`); the
parts several families share are in `tiny_parts.py`. Nothing is downloaded.
"""

from visionloom.backbones.registry import build_preset  # importing it imports every family
from visionloom.backbones.tiny_parts import PRESETS

__all__ = ["PRESETS", "build_preset"]
