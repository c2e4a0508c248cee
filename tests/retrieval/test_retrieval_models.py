"""Retrieval models: every phase builds, trains a step, encodes; the protocol mistakes of the reference code."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import small_config
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.data.pedes import read_pedes
from visionloom.retrieval.build import ARCHITECTURES, create_model
from visionloom.retrieval.datasets import Collate, TrainPairs
from visionloom.retrieval.train import prepare_vq
from visionloom.retrieval.vq import VQCache


def _batch(model, split, cache=None, size=4):
    pairs = TrainPairs(split, model.input_spec, cache)
    return Collate(model.input_spec.tokenizer.pad_token_id)([pairs[(i, 1000 + i)] for i in range(size)])


def _model_and_batch(architecture, pedes_root, *overrides):
    config = small_config(architecture, *overrides)
    split = read_pedes(pedes_root)["train"]
    vq, cache = prepare_vq(config, pedes_root) if architecture == "phase4" else (None, None)
    model = create_model(config, split.num_identities, vq)
    return model, _batch(model, split, cache), config


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_phase_trains_a_step_and_encodes(architecture, pedes_root, vq_dir):
    model, batch, config = _model_and_batch(architecture, pedes_root)
    out = model(batch)
    expected = {"sdm_loss", "id_loss"} | ({"gen_loss"} if config.loss.enable_gen else set())
    assert set(out) == expected
    assert all(torch.isfinite(value) for value in out.values())
    sum(out.values()).backward()
    trained = [name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("image" in name for name in trained) and any("text" in name for name in trained)
    model.eval()
    with torch.no_grad():
        image = model.encode_image(batch["images"])
        text = model.encode_text(batch["caption_ids"], batch["caption_mask"])
    assert image.shape == text.shape == (4, config.model.embed_dim)


def test_phase4_encoders_never_run_the_generator(pedes_root, vq_dir):
    model, batch, _ = _model_and_batch("phase4", pedes_root)
    calls = []
    model.generator.decoder.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model.encode_image(batch["images"])
        model.encode_text(batch["caption_ids"], batch["caption_mask"])
    assert calls == []
    model(batch)
    assert calls == [1]


def test_clean_captions_feed_retrieval_masked_ones_only_the_generator(pedes_root, vq_dir):
    """The reference code masked captions in place, so SDM and ID saw masked text. Not here."""
    model, batch, _ = _model_and_batch("phase4", pedes_root)
    tokenizer = model.input_spec.tokenizer
    split = read_pedes(pedes_root)["train"]
    clean = model.tokenize([caption for _, _, caption in split.pairs()[:4]])
    assert torch.equal(batch["caption_ids"], clean["caption_ids"])  # masking left the captions alone
    assert (batch["masked_caption_ids"] == tokenizer.mask_token_id).any()
    assert not (batch["caption_ids"] == tokenizer.mask_token_id).any()

    model.eval()  # no dropout: the two passes differ only in their inputs
    torch.manual_seed(0)
    first = model(batch)
    scrambled = dict(
        batch, masked_caption_ids=torch.randint_like(batch["masked_caption_ids"], 3, len(tokenizer))
    )
    torch.manual_seed(0)
    second = model(scrambled)
    assert torch.equal(first["sdm_loss"], second["sdm_loss"])
    assert torch.equal(first["id_loss"], second["id_loss"])
    assert not torch.equal(first["gen_loss"], second["gen_loss"])


def test_masked_images_are_copies_greyed_on_the_vq_grid(pedes_root, vq_dir):
    model, batch, config = _model_and_batch("phase4", pedes_root)
    assert not torch.equal(batch["images"], batch["masked_images"])
    rows, cols = config.model.code_grid
    grey_blocks = 0
    height, width = batch["images"].shape[-2:]
    for row in range(rows):
        for col in range(cols):
            block = batch["masked_images"][
                0,
                :,
                row * height // rows : (row + 1) * height // rows,
                col * width // cols : (col + 1) * width // cols,
            ]
            grey_blocks += int((block == 128).all())
    assert grey_blocks == round(config.model.image_mask_ratio * rows * cols)
    assert batch["vq_ids"].shape == (4, rows * cols)


def test_phase4_refuses_to_start_without_its_cache(pedes_root, vq_dir, tmp_path):
    config = small_config("phase4", f"vq.path={tmp_path / 'other_vq'}")
    import shutil

    shutil.copytree(vq_dir, tmp_path / "other_vq")
    (tmp_path / "other_vq" / "visionloom_vq.json").write_text('{"image_size": [96, 32], "note": "changed"}')
    with pytest.raises(FileNotFoundError, match=r"no VQ code cache for tokenizer .* belong to tokenizer"):
        prepare_vq(config, pedes_root)
    online = small_config("phase4", f"vq.path={tmp_path / 'other_vq'}", "vq.online=true")
    vq, cache = prepare_vq(online, pedes_root)
    assert cache is None and vq is not None


def test_online_codes_equal_cached_codes(pedes_root, vq_dir):
    config = small_config("phase4", "vq.online=true", "model.image_size=[384, 128]")
    split = read_pedes(pedes_root)["train"]
    vq, _ = prepare_vq(config, pedes_root)
    model = create_model(config, split.num_identities, vq)
    batch = _batch(model, split)
    assert "vq_ids" not in batch
    cache = VQCache.open(pedes_root, vq_dir)
    # Online codes come from the loader's image (384x128 here, the files' size), cached ones from
    # the file: the same pixels through the same resize must give the same codes.
    from visionloom.retrieval.datasets import load_image, to_tensor
    from visionloom.retrieval.vq import encode_codes

    image = split.images[0]
    pixels = to_tensor(load_image(image.path, None))[None]
    assert torch.equal(pixels[0], batch["images"][0]) or torch.equal(pixels[0].flip(-1), batch["images"][0])
    assert torch.equal(encode_codes(vq, pixels).flatten(), cache.codes(image.path, flipped=False))
    assert torch.equal(encode_codes(vq, pixels.flip(-1)).flatten(), cache.codes(image.path, flipped=True))
    assert torch.isfinite(model(batch)["gen_loss"])


def test_image_size_off_the_patch_grid_is_an_error_naming_sizes_that_work(pedes_root):
    config = small_config("phase2", "model.image_size=[390, 128]")
    with pytest.raises(ImageTokenMismatch, match=r"390x128 is not a multiple of the patch size 16.*384"):
        create_model(config, 4)


def test_t5gemma2_phase_takes_its_token_count_from_the_layer(pedes_root):
    model, batch, _ = _model_and_batch("phase3-t5gemma2", pedes_root)
    encoder = model.image_encoder
    assert "12 image tokens per 384x128 image" in model.input_spec.notes[0]
    output = encoder(batch["images"])
    assert output.token_mask.sum(1).tolist() == [encoder.adapter.tokens_per_image(384, 128)] * 4 == [12] * 4
    assert output.pooled.shape[-1] == encoder.adapter.text_width


def test_image_features_at_the_wrong_width_are_one_clear_error(pedes_root, monkeypatch):
    """The projection skipped, at the retrieval level: such features never reach the head."""
    model, batch, _ = _model_and_batch("phase2", pedes_root)
    encoder = model.image_encoder
    real_forward = encoder.forward

    def unprojected(images):
        output = real_forward(images)
        output.pooled = torch.cat([output.pooled, output.pooled], dim=-1)  # wider than declared
        return output

    monkeypatch.setattr(encoder, "forward", unprojected)
    with pytest.raises(
        ImageTokenMismatch, match=rf"{2 * encoder.width} wide but the projection expects {encoder.width}"
    ):
        model.encode_image(batch["images"])


def test_irra_augmentation_shifts_by_at_most_the_padding_and_erases_one_box(pedes_root):
    import random

    from visionloom.retrieval.datasets import IRRA_PAD, random_erase

    config = small_config("baseline")
    split = read_pedes(pedes_root)["train"]
    spec = create_model(config, split.num_identities).input_spec
    flip_only, irra = TrainPairs(split, spec), TrainPairs(split, spec, augment="irra")
    shifted = 0
    for seed in range(12):
        key = (seed % 4, 2000 + seed)
        clean, augmented = flip_only[key]["images"], irra[key]["images"]
        assert torch.equal(augmented, irra[key]["images"])  # the draw seed alone decides (resume)
        assert augmented.shape == clean.shape
        # Some offset within the padding maps the clean image onto the crop, zeros where padding shows.
        _, height, width = clean.shape
        padded = torch.zeros(3, height + 2 * IRRA_PAD, width + 2 * IRRA_PAD, dtype=clean.dtype)
        padded[:, IRRA_PAD : IRRA_PAD + height, IRRA_PAD : IRRA_PAD + width] = clean
        matches = [
            (padded[:, top : top + height, left : left + width] != augmented).any(0).float().mean()
            for top in range(2 * IRRA_PAD + 1)
            for left in range(2 * IRRA_PAD + 1)
        ]
        assert min(matches) < 0.41  # the rest is at most the erased box
        shifted += int(not torch.equal(augmented, clean))
    assert shifted > 0

    pixels = torch.randint(0, 256, (3, 64, 32), dtype=torch.uint8)
    erased = random_erase(pixels, random.Random(0), probability=1.0)
    changed = (erased != pixels).any(0).nonzero()  # [n, 2] rows and columns
    rows, cols = changed[:, 0], changed[:, 1]
    box = erased[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert 0.02 * 64 * 32 * 0.9 <= box[0].numel() <= 0.4 * 64 * 32 * 1.1
    assert (box == box[:, :1, :1]).all()  # one colour: the image's mean
    with pytest.raises(ValueError, match="'crop' is not one of"):
        TrainPairs(split, spec, augment="crop")


def test_irra_augmentation_with_online_vq_codes_is_refused(pedes_root, tmp_path):
    from visionloom.retrieval.train import train_retrieval

    config = small_config("phase4", "data.augment=irra", "vq.online=true")
    with pytest.raises(ValueError, match="online"):
        train_retrieval(config, pedes_root, tmp_path / "run", progress=False)


def test_dead_codes_move_onto_batch_latents_and_live_ones_stay():
    from diffusers.models.autoencoders.vae import VectorQuantizer

    from visionloom.retrieval.vq import restart_dead_codes

    quantize = VectorQuantizer(8, 4, beta=0.25)
    before = quantize.embedding.weight.detach().clone()
    latents = torch.randn(2, 4, 3, 3)
    counts = torch.tensor([5, 0, 2, 0, 0, 1, 1, 9])
    restarted = restart_dead_codes(quantize, latents, counts, torch.Generator().manual_seed(0))
    after = quantize.embedding.weight.detach()
    dead = [1, 3, 4]
    assert restarted == 3 and counts.sum() == 0
    assert torch.equal(after[[0, 2, 5, 6, 7]], before[[0, 2, 5, 6, 7]])
    flat = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    assert all((flat == after[code]).all(-1).any() for code in dead)  # each is one of the batch's latents


def test_vq_fit_restarts_dead_codes_and_stops_before_the_end(pedes_root, tmp_path):
    from visionloom.retrieval.config import VQFitConfig
    from visionloom.retrieval.vq import fit_vq

    split = read_pedes(pedes_root)["train"]
    config = VQFitConfig(steps=10, batch_size=4, restart_every=4)
    report = fit_vq(split, tmp_path / "vq", config, progress=False)
    assert report["codes_restarted"] > 0  # restarts at steps 4 and 8 (none after 80% of 10)
    off = fit_vq(
        split, tmp_path / "vq-off", VQFitConfig(steps=10, batch_size=4, restart_every=0), progress=False
    )
    assert off["codes_restarted"] == 0


def test_vq_fit_trains_through_the_one_trainer_and_restarts_inside_its_update(
    pedes_root, tmp_path, monkeypatch
):
    """The restarts happen in the Trainer's update (so a checkpoint holds them whole), at steps 4 and 8."""
    from visionloom.engine import trainer as trainer_module
    from visionloom.retrieval import vq as vq_module
    from visionloom.retrieval.config import VQFitConfig

    fits, restarts = [], []
    real_fit, real_restart = trainer_module.Trainer.fit, vq_module.VQTraining.after_optimizer_step
    monkeypatch.setattr(
        trainer_module.Trainer, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k)
    )

    def recording(self, step):
        restarts.append(step)
        return real_restart(self, step)

    monkeypatch.setattr(vq_module.VQTraining, "after_optimizer_step", recording)
    split = read_pedes(pedes_root)["train"]
    report = vq_module.fit_vq(
        split, tmp_path / "vq", VQFitConfig(steps=10, batch_size=4, restart_every=4), progress=False
    )
    assert fits == [1] and restarts == list(range(1, 11))  # called after every step; it restarts at 4, 8
    assert report["codes_restarted"] > 0 and report["final_mse"] > 0


@pytest.mark.parametrize("architecture", ["baseline", "phase1", "phase3-t5gemma2"])
def test_query_text_is_encoded_the_same_whichever_side_the_tokenizer_pads(architecture, pedes_root):
    # Training pads captions on the right (retrieval/datasets.py `pad`); the evaluator's queries must match
    # that even when the tokenizer pads on the left: CLIP's absolute positions and its pooling at
    # the end token would otherwise see other inputs than in training.
    model = create_model(small_config(architecture), num_identities=4).eval()
    captions = ["a woman in a red coat", "a man with a black backpack and blue jeans walking away"]
    tokenizer = model.input_spec.tokenizer
    with torch.no_grad():
        tokenizer.padding_side = "right"
        right = model.tokenize(captions)
        expected = model.encode_text(right["caption_ids"], right["caption_mask"])
        tokenizer.padding_side = "left"
        left = model.tokenize(captions)
        features = model.encode_text(left["caption_ids"], left["caption_mask"])
    assert torch.equal(left["caption_ids"], right["caption_ids"])
    assert right["caption_mask"][0, -1] == 0  # the batch really is padded
    torch.testing.assert_close(features, expected)
