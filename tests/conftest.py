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


@pytest.fixture(scope="session")
def pedes_root(tmp_path_factory):
    """A small synthetic CUHK-PEDES-format data set: 12 identities x 2 images, 2 captions each."""
    from visionloom.data.synth_pedes import generate

    root = tmp_path_factory.mktemp("pedes")
    generate(root, identities=12, seed=3, images_per_identity=2, progress=False)
    return root


@pytest.fixture(scope="session")
def vq_dir(pedes_root):
    """A VQ tokenizer fitted for a few steps on pedes_root's training images, with its code cache."""
    from visionloom.data.pedes import read_pedes
    from visionloom.retrieval.vq import VQFitConfig, build_cache, fit_vq

    directory = pedes_root / "vq"
    split = read_pedes(pedes_root)["train"]
    fit_vq(split, directory, VQFitConfig(steps=2, batch_size=4), progress=False)
    build_cache(pedes_root, split, directory, progress=False)
    return directory


def small_config(architecture: str, *overrides: str):
    """A retrieval config at test size: 64x32 images, few steps, small batches of 2 ids x 2."""
    from visionloom.retrieval.build import load_config

    base = [
        "model.image_size=[64, 32]",
        "train.steps=4",
        "train.batch_size=4",
        "train.ids_per_batch=2",
        "train.warmup_steps=1",
        "train.checkpoint_every=2",
        "train.log_every=1",
    ]
    if architecture == "phase3-t5gemma2":
        base[0] = "model.image_size=[384, 128]"
    return load_config(architecture, [*base, *overrides])


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory):
    """A small synthetic RefCOCO-style data set: 30 scenes of 224x224."""
    from visionloom.data.synth_scenes import generate

    root = tmp_path_factory.mktemp("scenes")
    generate(root, scenes=30, seed=5, progress=False)
    return root


@pytest.fixture(scope="session")
def scene_vlm(scenes_root, tmp_path_factory):
    """A tiny LLaVA pretrained for a few steps on scenes_root, saved as a checkpoint directory."""
    from visionloom.vlm.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(family="llava")
    config.train.steps, config.train.batch_size, config.train.warmup_steps = 4, 8, 1
    config.train.checkpoint_every = config.train.eval_every = 4
    out = tmp_path_factory.mktemp("vlm") / "llava"
    report = pretrain(scenes_root, out, config, progress=False)
    return out, report
