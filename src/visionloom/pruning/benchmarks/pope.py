"""POPE (Li et al., EMNLP 2023: object hallucination as yes/no questions) in its released format.

The release (github.com/RUCAIBox/POPE, `output/coco/`) ships one file per subset,
`coco_pope_{random,popular,adversarial}.json`, each JSON lines despite the suffix, 3000 questions
on 500 COCO val2014 images, half of them answered yes:

    {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}

`read_pope(root, subset)` finds the subset's file in ROOT or ROOT/output/coco, and the images in
`image_dir` (default ROOT/val2014). The file is untrusted: every line is checked (valid JSON, the
four fields with their types, a label of yes or no, an image name that stays inside the image
folder and exists, no repeated question id) and all problems are reported at once, each with
its line number.

Where ROOT holds no JSON release but lmms-eval's parquet data set (`lmms-lab/POPE`:
`data/test-0000k-of-00003.parquet`, 9000 rows, all three subsets, the image embedded), that is
read instead, row by row with the same checks, and the subset's rows kept by their `category`:

    {"id": "0", "question_id": "1", "question": "Is there a snowboard in the image?", "answer": "yes",
     "image_source": "COCO_val2014_000000310196", "image": {"bytes": ...}, "category": "random"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from visionloom.data.errors import DatasetFormatError, all_or_refuse, resolve_inside
from visionloom.images import EmbeddedImage
from visionloom.pruning.benchmarks.parquet import parquet_files, read_rows
from visionloom.pruning.benchmarks.question import SHORT_ANSWER, BenchmarkQuestion

SUBSETS = ("random", "popular", "adversarial")
LABELS = ("yes", "no")


@dataclass(frozen=True)
class PopeQuestion:
    question_id: int
    image: Path | EmbeddedImage  # resolved, inside the image folder; or the parquet row's bytes
    text: str
    label: str  # "yes" or "no"
    line: int  # 1-based line in the question file (parquet: row across the shards), for messages


PARQUET_SHARDS = "test-*.parquet"  # lmms-lab/POPE keeps them in data/


def find_question_file(root: Path, subset: str) -> Path | None:
    """The subset's JSON release file, or None where ROOT holds the parquet data set instead."""
    if subset not in SUBSETS:
        raise ValueError(f"POPE subset {subset!r}; the release has {', '.join(SUBSETS)}")
    name = f"coco_pope_{subset}.json"
    for candidate in (root / name, root / "output" / "coco" / name):
        if candidate.is_file():
            return candidate
    if parquet_shards(root):
        return None
    raise DatasetFormatError(
        f"{root}: no {name} (looked in {root} and {root / 'output' / 'coco'}; POPE's release has it "
        f"in output/coco/) and no lmms-lab/POPE parquet shards ({root / 'data' / PARQUET_SHARDS})"
    )


def parquet_shards(root: Path) -> list[Path]:
    return parquet_files(root / "data", PARQUET_SHARDS) or parquet_files(root, PARQUET_SHARDS)


def _check_line(
    number: int, line: str, image_dir: Path, seen: set[int]
) -> tuple[PopeQuestion | None, list[str]]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        return None, [f"line {number}: not valid JSON ({error.msg})"]
    if not isinstance(entry, dict):
        return None, [f"line {number}: expected an object with question_id, image, text, label"]
    problems = []
    question_id, text, label = entry.get("question_id"), entry.get("text"), entry.get("label")
    if isinstance(question_id, bool) or not isinstance(question_id, int):
        problems.append(f"line {number}: question_id {question_id!r} is not an integer")
    elif question_id in seen:
        problems.append(f"line {number}: question_id {question_id} appears twice")
    else:
        seen.add(question_id)
    if not isinstance(text, str) or not text.strip():
        problems.append(f"line {number}: text {text!r} is not a question")
    if label not in LABELS:
        problems.append(f"line {number}: label {label!r} is not yes or no")
    image, why = resolve_inside(image_dir, entry.get("image"))
    if why is not None:
        problems.append(f"line {number}: {why}")
    elif not image.is_file():
        problems.append(f"line {number}: image {entry['image']!r} is not in {image_dir}")
    if problems:
        return None, problems
    return PopeQuestion(question_id, image, text, label, number), []


def read_pope(
    root: str | Path, subset: str = "random", image_dir: str | Path | None = None
) -> list[PopeQuestion]:
    """Every question of a POPE subset, checked; one DatasetFormatError listing every problem."""
    root = Path(root)
    question_file = find_question_file(root, subset)
    if question_file is None:
        return read_pope_parquet(root, subset)
    images = Path(image_dir) if image_dir is not None else root / "val2014"
    if not images.is_dir():
        raise DatasetFormatError(
            f"{images}: no image folder; POPE's images are COCO val2014 (give the folder with --images)"
        )
    try:
        # JSON Lines ends lines at "\n" only: str.splitlines would also break at U+2028 and the
        # other Unicode separators that JSON strings may hold unescaped.
        lines = question_file.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"{question_file}: not UTF-8 text ({error.reason})") from None
    seen: set[int] = set()
    checked = (
        _check_line(number, line, images, seen) for number, line in enumerate(lines, start=1) if line.strip()
    )
    return all_or_refuse(question_file, checked, "questions")


def read_pope_parquet(root: Path, subset: str) -> list[PopeQuestion]:
    """A subset's questions from lmms-lab/POPE's parquet shards, every row checked as a JSON line is."""
    shards = parquet_shards(root)
    rows = read_rows(shards, ("question_id", "question", "answer", "category", "image"), image_column="image")
    seen: set[int] = set()

    def check(number: int, row: dict) -> tuple[PopeQuestion | None, list[str]]:
        where = row["_source"]
        if row["category"] not in SUBSETS:
            return None, [f"{where}: category {row['category']!r} is not one of {', '.join(SUBSETS)}"]
        if row["category"] != subset:
            return None, []
        problems = []
        raw_id = row["question_id"]
        question_id = int(raw_id) if isinstance(raw_id, str) and raw_id.strip().isdigit() else raw_id
        if isinstance(question_id, bool) or not isinstance(question_id, int):
            problems.append(f"{where}: question_id {raw_id!r} is not an integer")
        elif question_id in seen:
            problems.append(f"{where}: question_id {raw_id!r} appears twice in the {subset} subset")
        else:
            seen.add(question_id)
        text = row["question"]
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: question {text!r} is not a question")
        # lmms-eval's rule for the gold answer: lower-cased, stripped.
        label = row["answer"].lower().strip() if isinstance(row["answer"], str) else row["answer"]
        if label not in LABELS:
            problems.append(f"{where}: answer {row['answer']!r} is not yes or no")
        if row["image"] is None:
            problems.append(f"{where}: no image bytes")
        if problems:
            return None, problems
        return PopeQuestion(question_id, row["image"], text, label, number), []

    checked = (check(number, row) for number, row in enumerate(rows, start=1))
    return all_or_refuse(shards[0].parent, checked, f"questions of the {subset} subset")


def questions(root: Path, subset: str = "random", image_dir: str | None = None) -> list[BenchmarkQuestion]:
    """POPE's questions with the pruning papers' prompt (LLaVA's evaluation prompt)."""
    return [
        BenchmarkQuestion(str(q.question_id), q.image, f"{q.text}\n{SHORT_ANSWER}", q.label)
        for q in read_pope(root, subset, image_dir)
    ]


# ---------------------------------------------------------------- the answer rule and the metric
# POPE's own (the release's evaluate.py): keep the text before the first period, drop commas, split
# on spaces; an answer with the word "No", "no" or "not" is no, anything else (an empty answer
# included) is yes. Then, with yes as the positive class: accuracy, precision, recall, F1 and the
# yes-ratio (how often the model said yes; 0.5 on the balanced subsets when it is unbiased).
NEGATIVE_WORDS = ("No", "no", "not")


def pope_answer(text: str) -> str:
    """ "yes" or "no" for a generated answer, by POPE's rule."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if any(word in words for word in NEGATIVE_WORDS) else "yes"


def pope_metrics(answers: list[str], labels: list[str]) -> dict[str, float]:
    """{"accuracy", "precision", "recall", "f1", "yes_ratio"} in percent; `answers` are generated
    texts (normalised here), `labels` the file's yes/no."""
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers for {len(labels)} labels")
    if not labels:
        raise ValueError("no answers to score")
    predicted = [pope_answer(answer) for answer in answers]
    pairs = list(zip(predicted, labels, strict=True))
    true_positive = sum(p == "yes" and t == "yes" for p, t in pairs)
    false_positive = sum(p == "yes" and t == "no" for p, t in pairs)
    false_negative = sum(p == "no" and t == "yes" for p, t in pairs)
    true_negative = sum(p == "no" and t == "no" for p, t in pairs)
    precision = true_positive / (true_positive + false_positive) if true_positive + false_positive else 0.0
    recall = true_positive / (true_positive + false_negative) if true_positive + false_negative else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (true_positive + true_negative) / len(pairs),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * predicted.count("yes") / len(predicted),
    }
