"""Checkpoints named by hub id resolve as `transformers` resolves them: through a Hugging Face
cache laid out as huggingface_hub writes it (blobs, snapshots, refs), offline, and a missing one is
one line naming the id, the cache folder and what to run."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.hub_checkpoints import FIXTURES, checkpoint, hub_cache
from visionloom.backbones import load
from visionloom.cli import app
from visionloom.hub import CheckpointNotFound, checkpoint_path, split_hub_id

REPO = "llava-hf/llava-1.5-7b-hf"
MAIN = "a272c74b2481d8aff3aa6fc2c4bf891fe57334fb"
OLDER = "05ae2434cbb430be33edcba0c5203e7023f785b7"


def test_hub_id_forms_are_told_apart_from_paths():
    assert split_hub_id(REPO) == (REPO, None)
    assert split_hub_id(f"{REPO}@v1.0") == (REPO, "v1.0")
    for path in ("./llava", "/abs/llava", "~/llava", "checkpoints/llava/extra", "llava"):
        assert split_hub_id(path) is None, path


def test_load_of_a_hub_id_reads_the_cached_snapshot_of_main_offline(hub_cache_dir):
    snapshot = hub_cache(hub_cache_dir, REPO, checkpoint("llava-1.5-7b-hf"), commit=MAIN)
    assert checkpoint_path(REPO) == snapshot
    adapter = load(REPO)
    assert adapter.family == "llava"
    assert adapter.tokens_per_image(336, 336) == 576


def test_a_revision_picks_its_own_snapshot(hub_cache_dir):
    hub_cache(hub_cache_dir, REPO, checkpoint("llava-1.5-7b-hf"), commit=MAIN)
    older = hub_cache(hub_cache_dir, REPO, checkpoint("llava-1.5-7b-hf-2023"), commit=OLDER, refs=("v0",))
    assert checkpoint_path(REPO, revision="v0") == older
    assert checkpoint_path(f"{REPO}@{OLDER}") == older
    assert checkpoint_path(REPO) != older
    with pytest.raises(CheckpointNotFound, match="names revision"):
        checkpoint_path(f"{REPO}@v0", revision="main")


def test_a_missing_model_offline_names_the_id_the_cache_folder_and_the_command(hub_cache_dir):
    with pytest.raises(CheckpointNotFound) as caught:
        load("Qwen/Qwen2.5-VL-7B-Instruct")
    message = str(caught.value)
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in message
    assert str(hub_cache_dir / "models--Qwen--Qwen2.5-VL-7B-Instruct") in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "hf download Qwen/Qwen2.5-VL-7B-Instruct" in message
    assert "\n" not in message


def test_a_revision_missing_from_the_cache_is_named(hub_cache_dir):
    hub_cache(hub_cache_dir, REPO, checkpoint("llava-1.5-7b-hf"), commit=MAIN)
    with pytest.raises(
        CheckpointNotFound, match=r"no snapshot for v9.*hf download llava-hf/llava-1.5-7b-hf --revision v9"
    ):
        load(REPO, revision="v9")


def test_a_name_that_is_neither_path_preset_nor_id_is_refused_by_name():
    with pytest.raises(CheckpointNotFound, match="neither a local checkpoint directory, a hub id"):
        load("no-such-directory")


def test_doctor_takes_a_hub_id_and_names_a_missing_one_in_one_line(hub_cache_dir):
    hub_cache(hub_cache_dir, REPO, checkpoint("llava-1.5-7b-hf"), commit=MAIN)
    runner = CliRunner()
    passed = runner.invoke(app, ["doctor", REPO])
    assert passed.exit_code == 0, passed.output
    missing = runner.invoke(app, ["doctor", "llava-hf/llava-1.5-13b-hf"])
    assert missing.exit_code == 1  # the doctor's verdict: not healthy, with the cause
    errors = [line for line in missing.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "llava-hf/llava-1.5-13b-hf" in errors[0] and "hf download" in errors[0], (
        missing.output
    )
    assert "Traceback" not in missing.output and "┌" not in missing.output


def test_a_recipe_backbone_named_by_hub_id_resolves_through_the_cache(hub_cache_dir):
    from visionloom.config import ConfigError
    from visionloom.retrieval.build import local_checkpoint

    released = FIXTURES / "siglip-base-patch16-224"  # its config files: all that resolution reads
    snapshot = hub_cache(hub_cache_dir, "google/siglip-base-patch16-224", released, commit=MAIN)
    assert local_checkpoint("google/siglip-base-patch16-224", "model.vision.pretrained") == snapshot
    with pytest.raises(
        ConfigError, match=r"model.vision.pretrained: google/siglip-so400m.*--set model.vision.pretrained="
    ):
        local_checkpoint("google/siglip-so400m-patch14-384", "model.vision.pretrained")
