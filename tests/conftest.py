"""Shared fixtures: tiny presets built once per session, deterministic test images."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import Image

from visionloom.backbones.tiny import PRESETS, build_preset

FAMILIES = list(PRESETS)


@functools.cache
def cached_preset(name: str, native: bool = False):
    """A preset shared by tests that do not change it (use build_preset for one you change)."""
    return build_preset(name, native_resolution=native)


@pytest.fixture
def image():
    """image(height, width, seed) -> a deterministic random RGB image."""

    def make(height: int, width: int, seed: int = 0) -> Image.Image:
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    return make
