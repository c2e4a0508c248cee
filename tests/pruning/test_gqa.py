"""GQA testdev-balanced in its released format (question id -> entry, images/{imageId}.jpg) and its
metric (exact match after LLaVA's normalisation), against hand-computed values."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from visionloom.data.errors import DatasetFormatError
from visionloom.pruning.benchmarks.gqa import gqa_answer, gqa_metrics, read_gqa

ENTRIES = {  # as questions1.2.zip's testdev_balanced_questions.json writes them (fields shortened)
    "201307251": {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "weather"}],
        "entailed": [],
        "equivalent": ["201307251"],
        "question": "Is it overcast?",
        "imageId": "n161313",
        "isBalanced": True,
        "groups": {"global": None, "local": "14-weather"},
        "answer": "no",
        "types": {"detailed": "weatherVerify", "semantic": "global", "structural": "verify"},
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "fullAnswer": "No, it is clear.",
    },
    "202140546": {
        "question": "Which color is the shirt?",
        "imageId": "n161313",
        "isBalanced": True,
        "answer": "white",
        "fullAnswer": "The shirt is white.",
    },
    "20968379": {
        "question": "Who is wearing the helmet?",
        "imageId": "n235859",
        "isBalanced": True,
        "answer": "man",
        "fullAnswer": "The man is wearing a helmet.",
    },
}


def write_release(root, entries=ENTRIES, *, in_questions_folder: bool = True):
    (root / "images").mkdir(parents=True)
    for image_id in {entry["imageId"] for entry in ENTRIES.values()}:
        Image.new("RGB", (80, 60), (30, 120, 60)).save(root / "images" / f"{image_id}.jpg")
    folder = root / "questions" if in_questions_folder else root
    folder.mkdir(exist_ok=True)
    (folder / "testdev_balanced_questions.json").write_text(json.dumps(entries))
    return root


@pytest.mark.parametrize("in_questions_folder", [True, False])
def test_reads_the_released_layout(tmp_path, in_questions_folder):
    questions = read_gqa(write_release(tmp_path, in_questions_folder=in_questions_folder))
    assert [q.question_id for q in questions] == ["201307251", "202140546", "20968379"]
    assert questions[0].image == (tmp_path / "images" / "n161313.jpg").resolve()
    assert [q.answer for q in questions] == ["no", "white", "man"]
    assert questions[2].text == "Who is wearing the helmet?"


def test_every_bad_entry_is_named_at_once(tmp_path):
    entries = {
        **ENTRIES,
        "1": {"question": "What?", "imageId": "../outside", "answer": "x"},
        "2": {"question": "What?", "imageId": "n000001", "answer": "x"},
        "3": {"question": "", "imageId": "n161313", "answer": 4},
        "4": ["not", "an", "object"],
    }
    with pytest.raises(DatasetFormatError) as caught:
        read_gqa(write_release(tmp_path, entries))
    message = str(caught.value)
    assert "testdev_balanced_questions.json: 5 problem(s)" in message
    assert "question 1: image path '../outside.jpg' leads to" in message
    assert "question 2: image n000001.jpg is not in" in message
    assert "question 3: question '' is not a non-empty string" in message
    assert "question 3: answer 4 is not a non-empty string" in message
    assert "question 4: expected an object" in message


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DatasetFormatError, match="no testdev_balanced_questions.json"):
        read_gqa(tmp_path)
    write_release(tmp_path)
    with pytest.raises(DatasetFormatError, match="no image folder"):
        read_gqa(tmp_path, tmp_path / "elsewhere")
    (tmp_path / "questions" / "testdev_balanced_questions.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_gqa(tmp_path)


def test_answers_are_normalised_as_llava_does_and_compared_exactly():
    assert gqa_answer(" Yes.") == "yes"
    assert gqa_answer("White") == "white"
    assert gqa_answer("the man") == "the man"  # no article stripping: GQA compares exactly
    # 5 answers: "no" right, "White." right, "a man" wrong, "Man" right, "" wrong -> 3 of 5.
    answers = ["no", "White.", "a man", "Man", ""]
    gold = ["no", "white", "man", "man", "table"]
    assert gqa_metrics(answers, gold) == {"accuracy": 60.0}
    with pytest.raises(ValueError, match="2 answers for 1 questions"):
        gqa_metrics(["a", "b"], ["a"])
