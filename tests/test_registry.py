"""Checkpoint directories load through the registry, the path real checkpoints take; broken ones fail clearly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import FAMILIES, cached_preset
from visionloom.backbones import ImageTokenMismatch, adapter_for, load


@pytest.mark.parametrize("name", FAMILIES)
def test_saved_preset_loads_through_registry_with_identical_embeddings(name, tmp_path, image):
    original = cached_preset(name)
    original.save_pretrained(tmp_path)
    loaded = load(tmp_path)
    assert type(loaded) is type(original)
    pictures = [image(90, 60), image(50, 120, seed=1)]
    texts = ["<image> a", "b <image>"]
    before = original.encode_images(original.build_inputs(pictures, texts))
    inputs = loaded.build_inputs(pictures, texts)
    after = loaded.encode_images(inputs)
    assert torch.equal(before.embeds, after.embeds)
    assert torch.equal(after.embeds, loaded.model_inserted_embeds(inputs))


def test_unsupported_model_type_lists_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip_2"}))
    with pytest.raises(
        ValueError,
        match=r"model_type 'blip_2' is not supported; supported: deepseek_vl, gemma3, gemma4, internvl, llava",
    ):
        adapter_for(tmp_path)


def test_unknown_name_is_neither_preset_nor_directory():
    with pytest.raises(
        FileNotFoundError, match="neither a local checkpoint directory nor a preset.*never downloads"
    ):
        load("llava-hf/llava-1.5-7b-hf")


def _drop_weights(directory, fragment: str) -> None:
    weights = load_file(directory / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if fragment not in k},
        directory / "model.safetensors",
        metadata={"format": "pt"},
    )


def test_missing_projector_weights_are_refused(tmp_path):
    cached_preset("tiny-llava").save_pretrained(tmp_path)
    _drop_weights(tmp_path, "multi_modal_projector")
    with pytest.raises(ImageTokenMismatch, match=r"projector weights are missing \(.*multi_modal_projector"):
        load(tmp_path)


def test_mm_tokens_per_image_disagreeing_with_vision_config_is_refused(tmp_path):
    cached_preset("tiny-gemma3").save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["mm_tokens_per_image"] = 9
    config_file.write_text(json.dumps(config))
    with pytest.raises(ImageTokenMismatch, match="mm_tokens_per_image=9"):
        load(tmp_path)
