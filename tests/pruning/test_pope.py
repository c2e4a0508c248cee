"""POPE in its released format (JSON lines, COCO val2014 image names) and its metrics, against
hand-computed values."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from visionloom.data.errors import DatasetFormatError
from visionloom.pruning.benchmarks.pope import pope_answer, pope_metrics, read_pope

LINES = [  # as the release writes them: output/coco/coco_pope_random.json, one object per line
    {
        "question_id": 1,
        "image": "COCO_val2014_000000310196.jpg",
        "text": "Is there a snowboard in the image?",
        "label": "yes",
    },
    {
        "question_id": 2,
        "image": "COCO_val2014_000000310196.jpg",
        "text": "Is there a dining table in the image?",
        "label": "no",
    },
    {
        "question_id": 3,
        "image": "COCO_val2014_000000210789.jpg",
        "text": "Is there a person in the image?",
        "label": "yes",
    },
    {
        "question_id": 4,
        "image": "COCO_val2014_000000210789.jpg",
        "text": "Is there a giraffe in the image?",
        "label": "no",
    },
]


def write_release(root, lines=LINES, raw_lines=()):
    folder = root / "output" / "coco"
    folder.mkdir(parents=True)
    (root / "val2014").mkdir()
    for name in {line["image"] for line in LINES}:
        Image.new("RGB", (64, 48), (120, 30, 60)).save(root / "val2014" / name)
    text = "\n".join([*(json.dumps(line) for line in lines), *raw_lines]) + "\n"
    (folder / "coco_pope_random.json").write_text(text)
    return root


def test_reads_the_released_layout(tmp_path):
    questions = read_pope(write_release(tmp_path), "random")
    assert [q.question_id for q in questions] == [1, 2, 3, 4]
    assert questions[0].image == (tmp_path / "val2014" / "COCO_val2014_000000310196.jpg").resolve()
    assert [q.label for q in questions] == ["yes", "no", "yes", "no"]
    assert questions[2].line == 3


def test_every_bad_line_is_named_at_once(tmp_path):
    bad = [
        *LINES[:2],
        {
            "question_id": 2,
            "image": "COCO_val2014_000000210789.jpg",
            "text": "Is there a cat?",
            "label": "yes",
        },
        {"question_id": 5, "image": "../secret.jpg", "text": "Is there a cat?", "label": "yes"},
        {
            "question_id": 6,
            "image": "COCO_val2014_000000999999.jpg",
            "text": "Is there a cat?",
            "label": "Yes",
        },
    ]
    with pytest.raises(DatasetFormatError) as caught:
        read_pope(write_release(tmp_path, bad, raw_lines=["{not json"]), "random")
    message = str(caught.value)
    assert "coco_pope_random.json: 5 problem(s)" in message
    assert "line 3: question_id 2 appears twice" in message
    assert "line 4: image path '../secret.jpg' leads to" in message and "outside" in message
    assert "line 5: label 'Yes' is not yes or no" in message
    assert "line 5: image 'COCO_val2014_000000999999.jpg' is not in" in message
    assert "line 6: not valid JSON" in message


def test_a_missing_file_or_subset_or_image_folder_is_named(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"no coco_pope_popular.json .* output/coco"):
        read_pope(write_release(tmp_path), "popular")
    with pytest.raises(ValueError, match="subset 'hard'; the release has random, popular, adversarial"):
        read_pope(tmp_path, "hard")
    with pytest.raises(DatasetFormatError, match="no image folder; POPE's images are COCO val2014"):
        read_pope(tmp_path, "random", image_dir=tmp_path / "coco")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes, there is a snowboard in the image.", "yes"),
        ("No, there is no giraffe.", "no"),
        ("There is not a giraffe in the image.", "no"),
        ("Yes. No other animals are visible.", "yes"),  # only the first sentence counts
        ("no", "no"),
        ("NO", "yes"),  # POPE's rule matches "No", "no" and "not" as words, nothing else
        ("", "yes"),
        ("Nope", "yes"),
    ],
)
def test_answers_are_normalised_by_popes_rule(text, expected):
    assert pope_answer(text) == expected


def test_pope_metrics_against_hand_counts():
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "yes"]
    answers = ["Yes.", "No.", "Yes, a cat.", "Yes.", "No.", "There is not.", "Yes", "yes"]
    # predicted: yes no yes yes no no yes yes -> TP 3, FN 1, FP 2, TN 2
    metrics = pope_metrics(answers, labels)
    assert metrics["accuracy"] == pytest.approx(100 * 5 / 8)
    assert metrics["precision"] == pytest.approx(100 * 3 / 5)
    assert metrics["recall"] == pytest.approx(100 * 3 / 4)
    assert metrics["f1"] == pytest.approx(100 * 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert metrics["yes_ratio"] == pytest.approx(100 * 5 / 8)
    with pytest.raises(ValueError, match="3 answers for 8 labels"):
        pope_metrics(answers[:3], labels)
