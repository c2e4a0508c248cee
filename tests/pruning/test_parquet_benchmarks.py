"""POPE and GQA as lmms-eval downloads them (lmms-lab/POPE, lmms-lab/GQA parquet shards, images
embedded), read with `datasets`: the same questions, images, checks and metrics as the JSON
releases they were converted from."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from tests.pruning import test_gqa, test_pope
from visionloom.backbones.tiny import build_preset
from visionloom.data.errors import DatasetFormatError
from visionloom.images import read_rgb
from visionloom.pruning.benchmarks import read_benchmark
from visionloom.pruning.config import load_config
from visionloom.pruning.evaluate import evaluate_pruning

POPE_FEATURES = Features(  # lmms-lab/POPE's columns
    {
        "id": Value("string"),
        "question_id": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "image_source": Value("string"),
        "image": ImageFeature(),
        "category": Value("string"),
    }
)


def distinct_images(folder, names) -> None:
    """Every image different (the release fixtures paint them alike), so a mix-up would show."""
    for seed, name in enumerate(sorted(names)):
        pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=95)


def pope_both_layouts(tmp_path):
    """The POPE fixture in its JSON release, and the same questions as lmms-lab/POPE shards (two
    shards, with rows of another subset that the random subset must leave out)."""
    json_root = test_pope.write_release(tmp_path / "json")
    distinct_images(json_root / "val2014", {line["image"] for line in test_pope.LINES})
    rows = []
    for index, line in enumerate(test_pope.LINES):
        for category in ("random", "popular"):
            rows.append(
                {
                    "id": str(len(rows)),
                    "question_id": str(line["question_id"]),
                    "question": line["text"],
                    "answer": line["label"],
                    "image_source": line["image"].removesuffix(".jpg"),
                    "image": {"bytes": (json_root / "val2014" / line["image"]).read_bytes(), "path": None},
                    "category": category if category == "random" or index % 2 else "popular",
                }
            )
    parquet_root = tmp_path / "parquet"
    (parquet_root / "data").mkdir(parents=True)
    half = len(rows) // 2
    for shard, part in enumerate((rows[:half], rows[half:])):
        Dataset.from_list(part, features=POPE_FEATURES).to_parquet(
            str(parquet_root / "data" / f"test-0000{shard}-of-00002.parquet")
        )
    return json_root, parquet_root


def gqa_both_layouts(tmp_path):
    json_root = test_gqa.write_release(tmp_path / "json")
    image_ids = {entry["imageId"] for entry in test_gqa.ENTRIES.values()}
    distinct_images(json_root / "images", {f"{image_id}.jpg" for image_id in image_ids})
    parquet_root = tmp_path / "parquet"
    for folder in ("testdev_balanced_instructions", "testdev_balanced_images"):
        (parquet_root / folder).mkdir(parents=True)
    questions = [
        {
            "id": question_id,
            "imageId": entry["imageId"],
            "question": entry["question"],
            "answer": entry["answer"],
            "fullAnswer": entry["fullAnswer"],
            "isBalanced": entry["isBalanced"],
        }
        for question_id, entry in test_gqa.ENTRIES.items()
    ]
    Dataset.from_list(questions).to_parquet(
        str(parquet_root / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet")
    )
    images = [
        {
            "id": image_id,
            "image": {"bytes": (json_root / "images" / f"{image_id}.jpg").read_bytes(), "path": None},
        }
        for image_id in sorted(image_ids)
    ]
    Dataset.from_list(images, features=Features({"id": Value("string"), "image": ImageFeature()})).to_parquet(
        str(parquet_root / "testdev_balanced_images" / "testdev-00000-of-00001.parquet")
    )
    return json_root, parquet_root


LAYOUTS = {"pope": pope_both_layouts, "gqa": gqa_both_layouts}


@pytest.mark.parametrize("benchmark", ["pope", "gqa"])
def test_both_layouts_give_the_same_questions_and_images(benchmark, tmp_path):
    json_root, parquet_root = LAYOUTS[benchmark](tmp_path)
    from_json = read_benchmark(benchmark, json_root)
    from_parquet = read_benchmark(benchmark, parquet_root)
    assert [(q.question_id, q.question, q.gold) for q in from_parquet] == [
        (q.question_id, q.question, q.gold) for q in from_json
    ]
    for ours, theirs in zip(from_parquet, from_json, strict=True):
        assert np.array_equal(np.asarray(read_rgb(ours.image)), np.asarray(read_rgb(theirs.image)))


@pytest.mark.parametrize("benchmark", ["pope", "gqa"])
def test_prune_eval_on_both_layouts_gives_identical_results(benchmark, tmp_path):
    json_root, parquet_root = LAYOUTS[benchmark](tmp_path)
    vlm = tmp_path / "vlm"
    build_preset("tiny-llava").save_pretrained(vlm)
    settings = load_config(
        benchmark,
        [
            f"vlm={vlm}",
            "pruners=[random,visionzip]",
            "keep_ratios=[1.0,0.5]",
            "max_new_tokens=3",
            "prompt=plain",
        ],
    )
    reports = [
        evaluate_pruning(settings, root, tmp_path / f"out-{root.name}", progress=False)
        for root in (json_root, parquet_root)
    ]
    timings = ("prefill_ms_per_question", "generate_ms_per_question")
    for pruner, by_ratio in reports[0]["results"].items():
        for ratio, row in by_ratio.items():
            other = reports[1]["results"][pruner][ratio]
            assert {k: v for k, v in row.items() if k not in timings} == {
                k: v for k, v in other.items() if k not in timings
            }, (pruner, ratio)
    answers = [
        (tmp_path / f"out-{name}" / "answers" / "visionzip-0.5.jsonl").read_text()
        for name in ("json", "parquet")
    ]
    assert answers[0] == answers[1] and json.loads(answers[0].splitlines()[0])["question_id"]


def test_every_bad_pope_row_is_named_with_its_shard_and_row(tmp_path):
    root = tmp_path / "pope"
    (root / "data").mkdir(parents=True)
    rows = [
        {
            "id": "0",
            "question_id": "1",
            "question": "Is there a cat?",
            "answer": "maybe",
            "category": "random",
        },
        {"id": "1", "question_id": "2", "question": "Is there a dog?", "answer": "no", "category": "random"},
        {"id": "2", "question_id": "2", "question": "Is there a cow?", "answer": "Yes", "category": "random"},
        {"id": "3", "question_id": "x", "question": " ", "answer": "no", "category": "sometimes"},
    ]
    image = Image.new("RGB", (8, 8))
    for row in rows:
        row.update(
            image_source="img", image=None if row["id"] == "1" else {"bytes": _png(image), "path": None}
        )
    Dataset.from_list(rows, features=POPE_FEATURES).to_parquet(
        str(root / "data" / "test-00000-of-00001.parquet")
    )
    with pytest.raises(DatasetFormatError) as caught:
        read_benchmark("pope", root)
    message = str(caught.value)
    assert "answer 'maybe' is not yes or no" in message and "test-00000-of-00001.parquet row 0" in message
    assert "test-00000-of-00001.parquet row 1: no image bytes" in message
    assert "row 2: question_id '2' appears twice" in message
    assert "row 3: category 'sometimes' is not one of random, popular, adversarial" in message


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_shard_without_the_columns_or_not_parquet_is_one_line(tmp_path, caplog):
    root = tmp_path / "pope"
    (root / "data").mkdir(parents=True)
    Dataset.from_list([{"question": "q", "label": "yes"}]).to_parquet(
        str(root / "data" / "test-00000-of-00002.parquet")
    )
    with pytest.raises(
        DatasetFormatError,
        match=r"test-00000-of-00002.parquet: no column\(s\) question_id, answer, category, image; it has question, label",
    ):
        read_benchmark("pope", root)
    (root / "data" / "test-00000-of-00002.parquet").write_text("not parquet")
    datasets_logger = logging.getLogger("datasets")  # it does not pass its records to the root logger
    datasets_logger.addHandler(caplog.handler)
    try:
        with pytest.raises(
            DatasetFormatError, match=r"test-00000-of-00002.parquet: not a readable parquet file"
        ):
            read_benchmark("pope", root)
    finally:
        datasets_logger.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "parquet" in r.getMessage()]  # datasets' own report stays quiet


def test_gqa_rows_whose_image_is_missing_are_named(tmp_path):
    _json_root, parquet_root = gqa_both_layouts(tmp_path)
    shard = parquet_root / "testdev_balanced_images" / "testdev-00000-of-00001.parquet"
    kept = [row for row in Dataset.from_parquet(str(shard), keep_in_memory=True) if row["id"] != "n235859"]
    shard.unlink()
    Dataset.from_list(
        [{"id": row["id"], "image": {"bytes": _png(row["image"]), "path": None}} for row in kept],
        features=Features({"id": Value("string"), "image": ImageFeature()}),
    ).to_parquet(str(shard))
    with pytest.raises(DatasetFormatError, match=r"row 2 \(question 20968379\): image 'n235859' is not in"):
        read_benchmark("gqa", parquet_root)


def test_neither_layout_names_both(tmp_path):
    with pytest.raises(
        DatasetFormatError, match=r"no coco_pope_random.json .* and no lmms-lab/POPE parquet shards"
    ):
        read_benchmark("pope", tmp_path)
    with pytest.raises(
        DatasetFormatError, match=r"no testdev_balanced_questions.json .* and no lmms-lab/GQA parquet shards"
    ):
        read_benchmark("gqa", tmp_path)
