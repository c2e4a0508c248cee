"""The tiny scene VLM: labels, answer accuracy, and a saved checkpoint that loads back."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import cached_preset
from visionloom.backbones import load
from visionloom.data.scenes import read_scene_texts
from visionloom.vlm.answers import AnswerCollate, answers_correct
from visionloom.vlm.evaluate import answer_accuracy


def test_texts_cover_captions_questions_and_where_without_leaks(scenes_root):
    texts = read_scene_texts(scenes_root, "train")
    tasks = {text.task.split(":")[0] for text in texts}
    assert tasks == {"caption", "qa", "where"}
    for text in texts:
        if text.task == "where":  # the question must not name the answer's location
            assert " at the " not in text.prompt and " in the " not in text.prompt


def test_loss_on_text_after_the_image_accuracy_on_the_answer_only(scenes_root):
    for name in ("tiny-llava", "tiny-qwen2.5-vl"):
        adapter = cached_preset(name)
        texts = read_scene_texts(scenes_root, "val")[:3]
        batch = AnswerCollate(adapter)(texts)
        inputs = batch["inputs"]
        for row, text in enumerate(texts):
            labelled = inputs.input_ids[row][batch["labels"][row] != -100]
            answered = inputs.input_ids[row][batch["answer_labels"][row] != -100]
            question = text.prompt.replace("<image>", "")
            assert (
                adapter.tokenizer.decode(labelled) == f"{question} {text.answer}{adapter.tokenizer.eos_token}"
            )
            assert adapter.tokenizer.decode(answered) == f" {text.answer}{adapter.tokenizer.eos_token}"
            assert not inputs.image_token_mask[row][batch["labels"][row] != -100].any()


def test_exact_match_needs_every_answer_token_right():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, -100, 5, 6]])
    logits = torch.zeros(2, 4, 10)
    logits[0, 1, 5] = logits[0, 2, 6] = 1.0  # both answer tokens predicted
    logits[1, 1, 5] = logits[1, 2, 7] = 1.0  # the second one wrong
    assert answers_correct(logits, labels).tolist() == [True, False]


def test_pretrain_saves_a_checkpoint_that_loads_back_and_answers_the_same(scenes_root, scene_vlm):
    directory, report = scene_vlm
    assert set(report["test_accuracy"]) >= {"all", "caption", "qa", "where"}
    adapter = load(directory)
    assert type(adapter).__name__ == "LlavaAdapter"
    texts = read_scene_texts(scenes_root, "test")
    assert answer_accuracy(adapter, texts, by_kind=True) == report["test_accuracy"]
    random = load("tiny-llava")
    assert not torch.equal(
        adapter.model.get_input_embeddings().weight, random.model.get_input_embeddings().weight
    )
    # the warm-up head is kept beside the checkpoint, as trained (the selected weights of the run)
    from safetensors import safe_open
    from safetensors.torch import load_file

    from visionloom.data.scenes import CELL_CLASSES

    head = load_file(str(directory / "cell_head.safetensors"))
    assert head["weight"].shape == (CELL_CLASSES, adapter.text_width)
    best = load_file(str(directory / "run" / "best" / "model.safetensors"))
    assert torch.equal(head["weight"], best["cell_head.weight"])
    with safe_open(str(directory / "cell_head.safetensors"), "pt") as handle:
        assert len(handle.metadata()["layout"].split(",")) == CELL_CLASSES


def test_cell_labels_follow_the_masks(scenes_root):
    from visionloom.data.refcoco import read_refcoco
    from visionloom.data.scenes import SceneCells, cell_places
    from visionloom.data.synth_scenes import COLOURS
    from visionloom.data.synth_scenes import LOCATIONS as PLACES

    cells = SceneCells(scenes_root)
    sample = read_refcoco(scenes_root, "train")[0]
    colours, shapes = cells.labels(sample.image_path, (8, 8))
    mask = torch.from_numpy(sample.mask()).float()
    cover = torch.nn.functional.adaptive_avg_pool2d(mask[None], (8, 8))[0].flatten()
    mostly = cover > 0.6  # cells the object covers mostly are labelled with it
    assert mostly.any()
    instances = __import__("json").loads((scenes_root / "instances.json").read_text())
    annotation = next(
        a
        for a in instances["annotations"]
        if a["bbox"] == list(sample.box) and a["image_id"] == sample.image_id
    )
    assert (colours[mostly] == 1 + list(COLOURS).index(annotation["attributes"]["colour"])).all()
    assert (shapes[mostly] == annotation["category_id"]).all()
    places = cell_places((3, 3))
    assert [PLACES[i] for i in places.tolist()] == PLACES


def test_accuracy_by_kind_of_question_adds_up_to_the_tasks(scenes_root, scene_vlm):
    directory, _ = scene_vlm
    texts = read_scene_texts(scenes_root, "val")
    kinds = {text.task for text in texts if text.task.startswith("qa:")}
    assert {"qa:what-color", "qa:what-shape", "qa:where", "qa:is", "qa:how-many"} >= kinds
    assert {"qa:what-color", "qa:where"} <= kinds
    accuracy = answer_accuracy(load(directory), texts, by_kind=True)
    counts = {kind: sum(text.task == kind for text in texts) for kind in kinds}
    pooled = sum(accuracy[kind] * counts[kind] for kind in kinds) / sum(counts.values())
    assert accuracy["qa"] == pytest.approx(pooled)

    from typer.testing import CliRunner

    from visionloom.cli import app

    result = CliRunner().invoke(
        app, ["vlm", "accuracy", str(directory), "--data", str(scenes_root)], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    for kind in kinds:
        assert kind in result.output
    bad = CliRunner().invoke(app, ["vlm", "accuracy", str(directory), "--data", str(scenes_root / "missing")])
    assert bad.exit_code != 0 and "missing" in bad.output and "Traceback" not in bad.output


def test_worker_processes_give_the_same_batches(scenes_root, tmp_path, monkeypatch):
    from visionloom.vlm import train
    from visionloom.vlm.config import PretrainConfig

    made = []

    def loader(*args, **kwargs):  # the real DataLoader, its arguments noted
        made.append((args, kwargs))
        return DataLoader(*args, **kwargs)

    monkeypatch.setattr(train, "DataLoader", loader)
    config = PretrainConfig(family="llava")
    config.train.steps, config.train.batch_size, config.train.warmup_steps = 2, 4, 1
    config.train.checkpoint_every = config.train.eval_every = 2
    config.train.num_workers = 1
    train.pretrain(scenes_root, tmp_path / "vlm", config, progress=False)  # trains with a worker
    ((args, kwargs),) = made
    assert kwargs["num_workers"] == 1  # train.num_workers reached the loader

    def first_batches(workers: int) -> list[dict]:
        settings = {**kwargs, "num_workers": workers, "persistent_workers": False}
        batches = []
        for batch in DataLoader(*args, **settings):
            batches.append(batch)
            if len(batches) == 2:
                return batches
        return batches

    in_step, in_worker = first_batches(0), first_batches(1)
    assert len(in_step) == 2
    for a, b in zip(in_step, in_worker, strict=True):
        for key in ("labels", "answer_labels", "cell_colours", "cell_shapes"):
            assert torch.equal(a[key], b[key]), key
        assert torch.equal(a["inputs"].input_ids, b["inputs"].input_ids)
        assert torch.equal(a["inputs"].model_inputs["pixel_values"], b["inputs"].model_inputs["pixel_values"])


def test_a_run_from_before_the_warm_restart_resumes_as_one_without_it(tmp_path):
    # The scene-VLM config restarts half-way; a run whose config.yaml predates `train.restart_at`
    # trained without a restart, and resuming it must say so rather than take the recipe's value.
    from visionloom.config import ConfigError, check_resumed_config, save_run_config
    from visionloom.vlm.config import load_config

    config = load_config("llava")
    assert config.train.restart_at == 0.5
    save_run_config(tmp_path, config)
    saved = tmp_path / "config.yaml"
    saved.write_text(saved.read_text().replace("  restart_at: 0.5\n", ""))
    assert "restart_at" not in saved.read_text()
    with pytest.raises(ConfigError, match=r"train\.restart_at: None -> 0\.5"):
        check_resumed_config(tmp_path, config)
    check_resumed_config(tmp_path, load_config("llava", ["train.restart_at=null"]))
