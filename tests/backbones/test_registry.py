"""Checkpoint directories load through the registry, the path real checkpoints take; broken ones fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import FAMILIES, cached_preset, drop_weights
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


def test_missing_projector_weights_are_refused(tmp_path):
    cached_preset("tiny-llava").save_pretrained(tmp_path)
    drop_weights(tmp_path, "multi_modal_projector")
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


def test_every_registered_family_has_a_preset_passes_the_doctor_and_is_in_the_families_table():
    """What adding a family must bring: a preset of its class, a healthy doctor, a README row."""
    from pathlib import Path

    from visionloom.backbones.doctor import run_doctor
    from visionloom.backbones.registry import ADAPTERS
    from visionloom.backbones.tiny import PRESETS, build_preset

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("| family | preset | class |") :].split("\n\n")[0]
    preset_of = {type(build_preset(name)): name for name in PRESETS}
    for family in set(ADAPTERS.values()):
        assert not family.__abstractmethods__, (
            f"{family.__name__} leaves {sorted(family.__abstractmethods__)}"
        )
        assert family in preset_of, f"{family.__name__} has no tiny preset"
        assert f"| `{preset_of[family]}` | `{family.model_class.__name__}` |" in table, family.__name__
        report = run_doctor(preset_of[family])
        assert report.ok, (family.__name__, report.error)
