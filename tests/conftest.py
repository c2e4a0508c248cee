"""Shared fixtures: tiny presets built once per session, deterministic test images."""

from __future__ import annotations

import json
import os
import signal

# Before anything imports huggingface_hub (which reads it once): no test reaches a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture
def sigint_from_a_terminal():
    """SIGINT at Python's default (KeyboardInterrupt) for a test that sends one to its own process,
    even when the test run was started with SIGINT ignored (as a script's background job is)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


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
    from visionloom.retrieval.config import VQFitConfig
    from visionloom.retrieval.vq import build_cache, fit_vq

    directory = pedes_root / "vq"
    split = read_pedes(pedes_root)["train"]
    fit_vq(split, directory, VQFitConfig(steps=2, batch_size=4), progress=False)
    build_cache(pedes_root, split, directory, progress=False)
    return directory


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
    from visionloom.vlm.config import PretrainConfig
    from visionloom.vlm.train import pretrain

    config = PretrainConfig(family="llava")
    config.train.steps, config.train.batch_size, config.train.warmup_steps = 4, 8, 1
    config.train.checkpoint_every = config.train.eval_every = 4
    out = tmp_path_factory.mktemp("vlm") / "llava"
    report = pretrain(scenes_root, out, config, progress=False)
    return out, report


@pytest.fixture(scope="session")
def refcoco_release(scenes_root, tmp_path_factory):
    """scenes_root laid out as the refer repository releases RefCOCO (unc).

    data/refcoco/refs(unc).json + instances.json; images in data/images/mscoco/images/train2014/
    under COCO's file names (JPEG); splits train, val, testA and testB (no test); and mixed image
    sizes: every third image padded on the right by 64 px, its masks re-encoded for the new size.
    Returns data/refcoco.
    """

    from visionloom.data.refcoco import decode_segmentation
    from visionloom.data.synth_scenes import encode_mask

    data = tmp_path_factory.mktemp("refer") / "data"
    root, images = data / "refcoco", data / "images" / "mscoco" / "images" / "train2014"
    root.mkdir(parents=True)
    images.mkdir(parents=True)
    refs = json.loads((scenes_root / "refs.json").read_text())
    instances = json.loads((scenes_root / "instances.json").read_text())
    padded = {}
    for entry in instances["images"]:
        picture = Image.open(scenes_root / "images" / entry["file_name"]).convert("RGB")
        if entry["id"] % 3 == 0:
            wider = Image.new("RGB", (picture.width + 64, picture.height), (0, 0, 0))
            wider.paste(picture, (0, 0))
            picture, padded[entry["id"]] = wider, (entry["height"], entry["width"])
        entry["file_name"] = f"COCO_train2014_{entry['id']:012d}.jpg"
        entry["width"] = picture.width
        picture.save(images / entry["file_name"], quality=95)
    for annotation in instances["annotations"]:
        if annotation["image_id"] in padded:
            height, width = padded[annotation["image_id"]]
            mask = decode_segmentation(annotation["segmentation"], height, width)
            annotation["segmentation"] = encode_mask(np.pad(mask, ((0, 0), (0, 64))))
    for ref in refs:
        if ref["split"] == "test":
            ref["split"] = "testA" if ref["image_id"] % 2 == 0 else "testB"
        ref["file_name"] = f"COCO_train2014_{ref['image_id']:012d}.jpg"
    (root / "refs(unc).json").write_text(json.dumps(refs))
    (root / "instances.json").write_text(json.dumps(instances))
    return root


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """No test reaches a model hub: huggingface_hub runs offline, whatever the machine allows."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub_cache_dir(tmp_path, monkeypatch):
    """An empty Hugging Face cache that huggingface_hub (and a child process) reads instead of the user's."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache
