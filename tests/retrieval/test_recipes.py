"""The CUHK-PEDES recipes, proven without weights: each builds from checkpoints of the released
shapes (`tests/recipe_checkpoints.py`: real widths, one block per tower) and takes two optimizer
steps at batch 2 on CPU, with IRRA's parameter groups, the shapes that reach each loss, and a
finite loss checked."""

from __future__ import annotations

import csv
import math
import shutil

import pytest
import torch
from safetensors import safe_open

from tests.recipe_checkpoints import recipe_checkpoint
from visionloom.config import ConfigError
from visionloom.retrieval import model as model_module
from visionloom.retrieval.build import create_model
from visionloom.retrieval.config import load_config
from visionloom.retrieval.train import train_retrieval

CHECKPOINTS = {
    "baseline": ("clip-vit-base-patch16", "clip-vit-base-patch16"),
    "phase1": ("clip-vit-base-patch16", "t5-base"),
    "phase2": ("siglip-base-patch16-224", "t5-base"),
    "phase3": ("siglip-base-patch16-224", "t5-base"),
    "phase4": ("siglip-base-patch16-224", "t5-base"),
    "phase3-t5gemma2": ("t5gemma-2-270m-270m", None),
}
# What the loss functions receive at batch 2: the embedding width of each recipe (512), and the
# generator's logits: 192 codes (24 x 8 at f16) over the 1024-code book, or T5Gemma 2's vocabulary.
GENERATED = {"phase4": (192, 1024), "phase3-t5gemma2": (None, 262144)}
WARMUP = 4  # warm-up steps in the test (the recipes give 5 epochs)
LR = 1e-5


def _overrides(recipe: str) -> list[str]:
    vision, text = CHECKPOINTS[recipe]
    overrides = [
        f"model.vision.pretrained={recipe_checkpoint(vision)}",
        "train.epochs=null",
        "train.steps=2",
        "train.warmup_epochs=null",
        f"train.warmup_steps={WARMUP}",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.checkpoint_every=2",
        "train.eval_every=0",
        "train.log_every=1",
    ]
    if text:
        overrides.append(f"model.text.pretrained={recipe_checkpoint(text)}")
    if recipe == "phase4":  # a VQ of the recipe's f16 shape and codebook, narrow so it fits in a second
        overrides += [
            "vq.fit.channels=[8, 8, 8, 8, 8]",
            "vq.fit.layers_per_block=1",
            "vq.fit.latent_channels=8",
            "vq.fit.norm_groups=8",
            "vq.fit.steps=1",
            "vq.fit.batch_size=4",
        ]
    return overrides


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(CHECKPOINTS))
def test_recipe_builds_from_released_shapes_and_takes_two_steps(recipe, pedes_root, tmp_path, monkeypatch):
    config = load_config(f"cuhk-pedes/{recipe}", _overrides(recipe))
    data = tmp_path / "data"
    shutil.copytree(pedes_root, data)  # phase 4 writes its VQ and cache into the data root
    if recipe == "phase4":
        from visionloom.data.pedes import read_pedes
        from visionloom.retrieval.vq import ensure_vq

        ensure_vq(data, read_pedes(data)["train"], config.vq.fit, progress=False, say=lambda _: None)

    seen: dict[str, list] = {}

    def recording(name, function):
        def wrapped(*args, **kwargs):
            seen.setdefault(name, []).append([tuple(a.shape) for a in args if isinstance(a, torch.Tensor)])
            value = function(*args, **kwargs)
            assert torch.isfinite(value), f"{name} is {value}"
            return value

        monkeypatch.setattr(model_module, name, wrapped)

    for name in ("sdm_loss", "id_loss", "generation_loss"):
        recording(name, getattr(model_module, name))
    groups = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        groups.append(
            [(g["lr_factor"], g["weight_decay"], g["lr"], len(g["params"])) for g in self.param_groups]
        )
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)

    summary = train_retrieval(config, data, tmp_path / "run", progress=False, evaluate_test=False)
    assert summary["steps"] == 2
    with open(tmp_path / "run" / "train_log.csv") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle) if row["loss"]]
    # real-width weights and optimizer state, gigabytes for the larger recipes: not kept
    shutil.rmtree(tmp_path / "run")

    # IRRA's groups: the backbone at 1x with decay 4e-5, biases at 2x without, new modules at 5x
    factors = {(factor, decay) for factor, decay, _, _ in groups[0]}
    assert {(1.0, 4e-5), (2.0, 0.0), (5.0, 4e-5), (5.0, 0.0)} == factors
    first = LR * (0.1 + 0.9 / WARMUP)  # warm-up from 0.1x
    for factor, _, lr, _ in groups[0]:
        assert lr == pytest.approx(first * factor)
    # the shapes at the losses: [2, 512] features, ids over the training identities
    (image, text, pids, *_), *_ = seen["sdm_loss"]
    assert image == text == (2, 512) and pids == (2,)
    assert seen["id_loss"][0][0][0] == 2
    if recipe in GENERATED:
        length, vocabulary = GENERATED[recipe]
        logits, targets = seen["generation_loss"][0]
        assert logits[0] == 2 and logits[-1] == vocabulary and targets == logits[:2]
        if length is not None:
            assert logits[1] == length
    else:
        assert "generation_loss" not in seen
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


@pytest.mark.slow
def test_recipe_weights_come_from_the_checkpoints(pedes_root):
    config = load_config("cuhk-pedes/phase1", _overrides("phase1"))
    model = create_model(config, num_identities=8)
    clip, t5 = recipe_checkpoint("clip-vit-base-patch16"), recipe_checkpoint("t5-base")
    with safe_open(str(clip / "model.safetensors"), "pt") as weights:
        assert torch.equal(
            model.image_encoder.model.visual_projection.weight, weights.get_tensor("visual_projection.weight")
        )
    with safe_open(str(t5 / "model.safetensors"), "pt") as weights:
        query = "encoder.block.0.layer.0.SelfAttention.q.weight"
        assert torch.equal(
            model.text_encoder.model.encoder.block[0].layer[0].SelfAttention.q.weight,
            weights.get_tensor(query),
        )
    # T5's tokenizer has no mask token; phase 4 masks with T5's first sentinel
    assert (
        model.input_spec.tokenizer.mask_token is None
        or model.input_spec.tokenizer.mask_token == "<extra_id_0>"
    )
    phase4 = load_config(
        "cuhk-pedes/phase4", [*_overrides("phase4"), "model.codebook_size=1024", "model.code_grid=[24, 8]"]
    )
    spec = create_model(phase4, num_identities=8).input_spec
    assert spec.tokenizer.mask_token == "<extra_id_0>" and spec.tokenizer.mask_token_id == 32099
    assert spec.image_mask_grid == (24, 8)


def test_a_missing_checkpoint_names_the_setting_and_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config("cuhk-pedes/baseline")
    with pytest.raises(
        ConfigError,
        match=r"model.text.pretrained: checkpoints/clip-vit-base-patch16: no local directory .* \(relative to .*"
        r"as a hub id, not in the Hugging Face cache .*HF_HUB_OFFLINE=1 allows no download",
    ):
        create_model(config, num_identities=4)


@pytest.mark.slow
def test_clip_pooling_refuses_a_tokenizer_that_would_pool_at_a_word(tmp_path):
    from tests.recipe_checkpoints import _word_tokenizer

    clip = tmp_path / "clip"
    shutil.copytree(recipe_checkpoint("clip-vit-base-patch16"), clip)
    # a tokenizer whose end token is not the highest id: the released config's eos_token_id 2
    # would pool at the highest id in the text, some word
    low = _word_tokenizer(
        {"<|startoftext|>": 0, "<|endoftext|>": 1, "<|filler|>": 49407},
        "<|startoftext|> $A <|endoftext|>",
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    )
    low.save_pretrained(str(clip))
    config = load_config(
        "cuhk-pedes/baseline", [f"model.vision.pretrained={clip}", f"model.text.pretrained={clip}"]
    )
    with pytest.raises(
        ValueError, match=r"pooled at its highest token id, 49407, but the tokenizer's end token"
    ):
        create_model(config, num_identities=4)


def test_vq_fit_takes_its_size_from_the_recipe_and_flags_override_it(pedes_root, monkeypatch):
    from typer.testing import CliRunner

    from visionloom.cli import app
    from visionloom.retrieval import vq

    fitted = []
    monkeypatch.setattr(vq, "fit_vq", lambda split, out, config, **_: fitted.append(config) or {})
    result = CliRunner().invoke(
        app, ["retrieval", "vq", "fit", str(pedes_root), "--config", "cuhk-pedes/phase4", "--steps", "3"]
    )
    assert result.exit_code == 0, result.output
    (config,) = fitted
    assert config.image_size == (384, 128) and config.channels == (128, 128, 256, 256, 512)
    assert config.codebook_size == 1024 and config.layers_per_block == 2
    assert config.steps == 3 and config.restart_every == 200  # the flag given wins; the rest is the recipe's


@pytest.mark.slow
def test_a_checkpoint_missing_weights_is_refused_not_filled_at_random(tmp_path):
    from safetensors.torch import load_file, save_file

    t5 = tmp_path / "t5"
    shutil.copytree(recipe_checkpoint("t5-base"), t5)
    weights = load_file(str(t5 / "model.safetensors"))
    del weights["encoder.block.0.layer.0.SelfAttention.q.weight"]
    save_file(weights, str(t5 / "model.safetensors"), metadata={"format": "pt"})
    config = load_config("cuhk-pedes/phase1", [*_overrides("phase1"), f"model.text.pretrained={t5}"])
    with pytest.raises(
        ValueError, match=r"model.text.pretrained: .* has no weights for 1 parameter\(s\) of T5EncoderModel"
    ):
        create_model(config, num_identities=4)
