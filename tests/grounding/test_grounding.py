"""Grounding: attention collection on each family's grid, head, SAM refiner, losses, metrics, training."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tests.helpers import cached_preset
from visionloom.data.refcoco import read_refcoco
from visionloom.grounding.attention import collect, expression_token_count, merge_attention, pad_to_square
from visionloom.grounding.config import GroundingConfig, HeadConfig, SamSettings, load_config
from visionloom.grounding.features import collate, compute_features
from visionloom.grounding.head import MaskHead
from visionloom.grounding.loss import bce_loss, dice_loss
from visionloom.grounding.metrics import MaskMetrics
from visionloom.grounding.model import Grounder
from visionloom.grounding.sam import SamRefiner, box_of, tiny_sam

FAMILIES = ["tiny-llava", "tiny-qwen2.5-vl", "tiny-llava-next"]


@pytest.mark.parametrize("name", FAMILIES)
def test_collected_attention_is_the_expressions_rows_on_the_family_grid(name, image):
    """Recompute by hand from the layer's own forward: same rows, same grid, mean over the tokens."""
    adapter = cached_preset(name)
    picture = image(224, 224, seed=1)
    expression = "the small red circle left of the blue square"
    prompt = "<image>\nwhere is {expression}?"  # text after the expression too
    features = collect(adapter, [picture], [expression], prompt=prompt)[0]

    inputs = adapter.build_inputs(
        [picture], ["<image>\nwhere is the small red circle left of the blue square?"]
    )
    output = adapter.forward(inputs, output_attentions=True, output_hidden_states=True)
    count, after = expression_token_count(adapter, prompt, expression, "x")
    length = int(inputs.attention_mask[0].sum())
    positions = torch.arange(length - after - count, length - after)
    assert adapter.tokenizer.decode(inputs.input_ids[0, positions]).strip() == expression
    maps = output.image_attentions[0]  # [L, H, S, h, w]
    layers, heads, _, h, w = maps.shape
    assert (h, w) == inputs.geometries[0].token_grid
    expected = maps[:, :, positions].mean(2).reshape(layers * heads, h, w)
    torch.testing.assert_close(features.attention, expected.float())
    assert features.hidden.shape == (2, count, adapter.text_width)
    torch.testing.assert_close(features.hidden[-1], output.hidden_states[-1][0, positions].float())


def test_merge_by_max_and_a_missing_expression_is_named():
    attention = torch.rand(2, 3, 5, 2, 2)  # [L, H, S, h, w]
    mask_ids = torch.tensor([-1, 0, 0, 1, -1])
    merged = merge_attention(attention, mask_ids, "max", "s")
    assert merged.shape == (2, 6, 2, 2)
    torch.testing.assert_close(merged[1], attention[:, :, 3].reshape(6, 2, 2))
    torch.testing.assert_close(merged[0], attention[:, :, 1:3].amax(2).reshape(6, 2, 2))
    with pytest.raises(ValueError, match="scene_7.png: expression 1 has no tokens"):
        merge_attention(attention, torch.tensor([-1, 0, 0, 2, -1]), "mean", "scene_7.png")


def test_an_empty_expression_is_an_error_naming_the_sample(image):
    with pytest.raises(ValueError, match="scene_3.png ref 4.*has no tokens"):
        collect(cached_preset("tiny-llava"), [image(224, 224)], [""], names=["scene_3.png ref 4"])


def test_padding_is_cropped_back_to_the_image(image):
    picture = image(100, 200)
    square, padding = pad_to_square(picture)
    assert square.size == (200, 200) and padding.size == (100, 200)
    grid = torch.zeros(8, 8)
    grid[:4] = 1.0  # the top half of the square is the image
    cropped = padding.crop(grid)
    assert cropped.shape == (100, 200)
    assert torch.allclose(cropped, torch.ones(100, 200))


def test_dice_and_bce_against_hand_computed_values():
    logits = torch.tensor([[[0.0, 2.0], [-2.0, 0.0]]])
    target = torch.tensor([[[1, 1], [0, 0]]])
    p = torch.sigmoid(logits).flatten()
    expected_dice = 1 - (2 * (p[0] + p[1]) + 1) / (p.sum() + 2 + 1)
    torch.testing.assert_close(dice_loss(logits, target), expected_dice)
    t = target.flatten().float()
    expected_bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    torch.testing.assert_close(bce_loss(logits, target), expected_bce)


def test_ciou_miou_and_precision_by_hand():
    metrics = MaskMetrics()
    a_pred = torch.zeros(4, 4, dtype=torch.bool)
    a_pred[:2] = True  # 8 pixels
    a_true = torch.zeros(4, 4, dtype=torch.bool)
    a_true[:1] = True  # 4 pixels, inside: IoU 0.5
    b_pred = torch.ones(2, 2, dtype=torch.bool)
    b_true = torch.ones(2, 2, dtype=torch.bool)  # IoU 1
    metrics.update(a_pred, a_true)
    metrics.update(b_pred, b_true)
    result = metrics.result()
    assert result["cIoU"] == pytest.approx(100 * (4 + 4) / (8 + 4))
    assert result["mIoU"] == pytest.approx(75.0)
    assert result["P@0.5"] == pytest.approx(50.0)  # IoU 0.5 is not above 0.5
    with pytest.raises(ValueError, match="differ in size"):
        metrics.update(a_pred, b_true)


def test_head_output_grid_and_channel_check():
    head = MaskHead(8, HeadConfig(width=8, upsample=4))
    assert head(torch.rand(3, 8, 8, 8)).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="built for 8 attention channels.*got 6"):
        head(torch.rand(3, 6, 8, 8))


def _refiner(multimask=True) -> SamRefiner:
    sam, processor = tiny_sam(seed=0)
    return SamRefiner(sam, processor, SamSettings(multimask=multimask))


def test_sam_refiner_masks_come_back_at_image_size_and_read_the_text(image):
    refiner = _refiner()
    pictures = [image(224, 224, 1), image(120, 224, 2)]
    embeddings, sizes = refiner.embed_images(pictures)
    assert sizes.tolist() == [[256, 256], [137, 256]]
    coarse = [torch.full((224, 224), -5.0), torch.full((120, 224), -5.0)]
    coarse[0][50:100, 60:120] = 5.0
    coarse[1][10:60, 20:80] = 5.0
    text = [torch.randn(3, refiner.prompt_width), torch.randn(5, refiner.prompt_width)]
    refined = refiner(embeddings, sizes, coarse, text)
    assert [r.shape for r in refined] == [(224, 224), (120, 224)]
    other = refiner(embeddings, sizes, coarse, [t + 1.0 for t in text])
    assert not torch.allclose(refined[0], other[0])  # the text tokens are prompts SAM reads


def test_multimask_keeps_the_candidate_closest_to_the_coarse_mask(monkeypatch):
    refiner = _refiner()
    coarse = torch.full((64, 64), -5.0)
    coarse[:32] = 5.0  # top half
    candidates = torch.full((1, 1, 3, 64, 64), -5.0)
    candidates[0, 0, 0, :, :32] = 5.0  # left half: IoU 1/3
    candidates[0, 0, 1, :30] = 5.0  # nearly the top half: IoU 30/32
    candidates[0, 0, 2] = 5.0  # everything: IoU 1/2
    monkeypatch.setattr(
        refiner.sam.mask_decoder, "forward", lambda **kwargs: (candidates, torch.zeros(1, 1, 3))
    )
    embeddings = torch.zeros(1, 32, 16, 16)
    refined = refiner(
        embeddings, torch.tensor([[256, 256]]), [coarse], [torch.zeros(1, refiner.prompt_width)]
    )
    assert ((refined[0] > 0) == (torch.arange(64)[:, None] < 30).expand(64, 64)).float().mean() > 0.98


def test_box_of_an_empty_mask_is_the_whole_image():
    assert box_of(torch.zeros(5, 7, dtype=torch.bool)).tolist() == [0, 0, 6, 4]
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[1:3, 2:6] = True
    assert box_of(mask).tolist() == [2, 1, 5, 2]


def _state_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_training_changes_the_head_and_never_the_vlm(scenes_root, tmp_path, monkeypatch):
    from visionloom.grounding import build as grounding_build
    from visionloom.grounding import evaluate as grounding_evaluate
    from visionloom.grounding import train as grounding_train

    adapter = cached_preset("tiny-llava")
    before = _state_digest(adapter.model)
    monkeypatch.setattr(grounding_build, "load_vlm", lambda config: adapter)
    config = GroundingConfig(name="t", vlm="tiny-llava")
    config.head.width = 8
    config.train.steps, config.train.batch_size, config.train.warmup_steps = 3, 4, 1
    config.train.checkpoint_every = config.train.eval_every = 3
    summary = grounding_train.train_grounding(config, scenes_root, tmp_path / "run", progress=False)
    assert _state_digest(adapter.model) == before
    assert summary["evaluated"] == ["val", "test"]  # the synthetic scenes' evaluation splits
    assert set(summary["test"]) == {
        f"{kind}_{m}" for kind in ("coarse", "refined") for m in ("cIoU", "mIoU", "P@0.5")
    }
    assert summary["selected"]["step"] == 3 and (tmp_path / "run" / "test_metrics.json").is_file()
    # SAM's frozen parts come from sam.path when the model is built; checkpoints leave them out.
    from safetensors import safe_open

    run = tmp_path / "run"
    for weights in [run / "best" / "model.safetensors", *run.glob("checkpoints/step_*/model.safetensors")]:
        with safe_open(weights, "pt") as handle:
            names = set(handle.keys())
        assert not any(name.startswith("refiner.sam.vision_encoder.") for name in names)
        assert any(name.startswith("head.") for name in names) and "text_layer_weights" in names
    # The trained weights are what eval loads: same predictions from a fresh load.
    model, _, features = grounding_evaluate.load_trained(tmp_path / "run", data_root=scenes_root, split="val")
    assert grounding_evaluate.evaluate(model, features) == pytest.approx(
        {key: value for key, value in summary["selected"].items() if key != "step"}
    )


def test_grounder_losses_and_gradients_stop_at_the_features(scenes_root):
    adapter = cached_preset("tiny-qwen2.5-vl")
    refiner = _refiner()
    samples = read_refcoco(scenes_root, "val")[:3]
    features = compute_features(adapter, samples, refiner, progress=False)
    model = Grounder(features[0].attention.shape[0], 2, adapter.text_width, HeadConfig(width=8), refiner)
    batch = collate(features)
    losses = model(batch)
    assert set(losses) == {"coarse_loss", "refined_loss"}
    sum(losses.values()).backward()
    assert model.text_proj[0].weight.grad is not None and model.head.out.weight.grad is not None
    assert all(p.grad is None for p in refiner.sam.vision_encoder.parameters())
    assert refiner.sam.mask_decoder.mask_tokens.weight.grad is not None
    assert all(not p.requires_grad for p in adapter.model.parameters()) or all(
        p.grad is None for p in adapter.model.parameters()
    )


def test_the_text_only_control_reads_the_expression_and_never_the_attention(scenes_root):
    """head.input=text: the same head fed the expression's hidden states over the grid, no attention."""
    from dataclasses import replace

    adapter = cached_preset("tiny-llava")
    samples = read_refcoco(scenes_root, "val")[:3]
    features = compute_features(adapter, samples, None, progress=False)
    torch.manual_seed(0)
    model = Grounder(
        features[0].attention.shape[0], 2, adapter.text_width, HeadConfig(width=8, input="text"), None
    )
    batch = collate(features)["features"]
    with torch.no_grad():
        reference = model.predict(batch).coarse
        other_attention = model.predict(replace(batch, attention=torch.rand_like(batch.attention))).coarse
        other_text = model.predict(replace(batch, hidden=[h.flip(1) + 1.0 for h in batch.hidden])).coarse
    assert all(torch.equal(a, b) for a, b in zip(reference, other_attention, strict=True))
    assert not all(torch.allclose(a, b) for a, b in zip(reference, other_text, strict=True))
    assert model.head.in_channels == 8 + 2 and not model.head.normalise  # text and (x, y); no normalising
    losses = model({"features": batch})
    losses["coarse_loss"].backward()
    assert model.text_grid.weight.grad is not None and model.text_layer_weights.grad is not None


def test_images_of_different_sizes_need_one_side_where_the_processor_keeps_sizes(image):
    """Qwen2.5-VL keeps each padded square's size: grids differ unless image_side fixes one."""
    from visionloom.grounding.attention import collect
    from visionloom.grounding.features import SampleFeatures

    adapter = cached_preset("tiny-qwen2.5-vl")
    images = [image(112, 112, 1), image(168, 140, 2)]
    free = collect(adapter, images, ["the red circle", "the blue square"])
    assert free[0].attention.shape[-2:] != free[1].attention.shape[-2:]
    items = [
        SampleFeatures(
            **vars(f),
            name=f"sample {i}",
            mask=torch.zeros(4, 4, dtype=torch.bool),
            sam_embedding=None,
            sam_size=None,
        )
        for i, f in enumerate(free)
    ]
    with pytest.raises(ValueError, match="different token grids.*set image_side"):
        collate(items)
    fixed = collect(adapter, images, ["the red circle", "the blue square"], image_side=112)
    assert fixed[0].attention.shape[-2:] == fixed[1].attention.shape[-2:] == (4, 4)
    assert fixed[1].padding.size == (168, 140)  # masks still come back at the image's own size


@pytest.mark.slow
def test_qwen_pretrains_and_grounds_end_to_end(scenes_root, tmp_path):
    """The Qwen2.5-VL path of both commands: its 3-D positions, merged grid and processor."""
    from visionloom.grounding import train as grounding_train
    from visionloom.vlm.config import PretrainConfig
    from visionloom.vlm.train import pretrain

    config = PretrainConfig(family="qwen2.5-vl")
    config.train.steps, config.train.batch_size, config.train.warmup_steps = 2, 4, 1
    config.train.checkpoint_every = config.train.eval_every = 2
    report = pretrain(scenes_root, tmp_path / "vlm", config, progress=False)
    assert "where" in report["test_accuracy"]
    ground = load_config("qwen2.5-vl", ["train.steps=2", "train.batch_size=4", "head.width=8"])
    ground.vlm = str(tmp_path / "vlm")
    ground.train.checkpoint_every = ground.train.eval_every = 2
    summary = grounding_train.train_grounding(ground, scenes_root, tmp_path / "run", progress=False)
    assert summary["selected"]["step"] == 2 and "refined_cIoU" in summary["test"]


def test_refcoco_as_released_trains_and_evaluates_on_val_testa_and_testb(
    refcoco_release, tmp_path, monkeypatch
):
    """The refer layout, found by itself; RefCOCO's splits; images of mixed sizes."""
    from visionloom.data.refcoco import read_refcoco
    from visionloom.grounding import build as grounding_build
    from visionloom.grounding import evaluate as grounding_evaluate
    from visionloom.grounding import train as grounding_train

    samples = read_refcoco(refcoco_release, dataset="refcoco")
    assert {s.split for s in samples} == {"train", "val", "testA", "testB"}
    assert len({(s.height, s.width) for s in samples}) == 2  # mixed sizes
    mscoco = (refcoco_release.parent / "images" / "mscoco" / "images" / "train2014").resolve()
    assert all(s.image_path.parent == mscoco for s in samples)
    padded = next(s for s in samples if s.width != s.height)
    assert padded.mask().shape == (padded.height, padded.width)

    adapter = cached_preset("tiny-llava")
    monkeypatch.setattr(grounding_build, "load_vlm", lambda config: adapter)
    config = GroundingConfig(name="t", vlm="tiny-llava", split_by="unc")
    config.head.width = 8
    config.train.steps, config.train.batch_size, config.train.warmup_steps = 2, 4, 1
    config.train.checkpoint_every = config.train.eval_every = 2
    summary = grounding_train.train_grounding(config, refcoco_release, tmp_path / "run", progress=False)
    assert summary["evaluated"] == ["val", "testA", "testB"]
    assert summary["image_dir"] == str(mscoco)
    assert summary["val"] == pytest.approx(
        {key: value for key, value in summary["selected"].items() if key != "step"}
    )
    written = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert written == {split: summary[split] for split in summary["evaluated"]}
    # ground eval gives the same numbers per split, from the run directory.
    again = grounding_evaluate.evaluate_run(tmp_path / "run", refcoco_release)
    assert list(again) == summary["evaluated"]
    for split in summary["evaluated"]:
        assert again[split] == pytest.approx(summary[split]), split


def test_a_data_set_without_val_is_refused_before_any_training(refcoco_release, tmp_path, monkeypatch):
    import shutil

    from visionloom.data.errors import DatasetFormatError
    from visionloom.grounding import build as grounding_build
    from visionloom.grounding import train as grounding_train

    root = tmp_path / "refcoco"
    shutil.copytree(refcoco_release, root)
    refs = json.loads((root / "refs(unc).json").read_text())
    for ref in refs:
        ref["split"] = "train" if ref["split"] == "val" else ref["split"]
    (root / "refs(unc).json").write_text(json.dumps(refs))
    loaded = []
    monkeypatch.setattr(grounding_build, "load_vlm", lambda config: loaded.append(1))
    config = GroundingConfig(
        name="t",
        vlm="tiny-llava",
        image_dir=str(refcoco_release.parent / "images" / "mscoco" / "images" / "train2014"),
    )
    with pytest.raises(
        DatasetFormatError, match=r"no 'val' split.*splits present: \['testA', 'testB', 'train'\]"
    ):
        grounding_train.train_grounding(config, root, tmp_path / "run", progress=False)
    assert loaded == [] and not (tmp_path / "run").exists()  # nothing loaded, nothing written


def test_images_that_are_nowhere_are_named_with_the_folders_tried(refcoco_release, tmp_path):
    import shutil

    from visionloom.data.errors import DatasetFormatError
    from visionloom.data.refcoco import read_refcoco

    root = tmp_path / "refcoco"
    shutil.copytree(refcoco_release, root)  # without the images next to it
    with pytest.raises(
        DatasetFormatError,
        match=r"COCO_train2014_000000000000.jpg.*images/mscoco/images/train2014.*image_dir",
    ):
        read_refcoco(root)
    with pytest.raises(DatasetFormatError, match=r"image_dir .*elsewhere: COCO_train2014_000000000000.jpg"):
        read_refcoco(root, image_dir=tmp_path / "elsewhere")
