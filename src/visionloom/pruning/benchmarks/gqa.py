"""GQA (Hudson and Manning, CVPR 2019) testdev-balanced in its released format: open-ended questions.

The release (questions1.2.zip, images.zip from gqadataset.org) has one JSON object per split,
question id -> entry, and the images as `images/{imageId}.jpg`:

    {"201307251": {"imageId": "n161313", "question": "Is it overcast?", "answer": "no",
                   "fullAnswer": "No, it is clear.", "isBalanced": true, "types": {...}, ...}}

`read_gqa(root)` finds `testdev_balanced_questions.json` in ROOT or ROOT/questions and the images
in `image_dir` (default ROOT/images). The file is untrusted: every entry is checked (an object
with a string imageId, question and answer; an image id that names a file inside the image folder,
and that file exists) and all problems are reported at once, each with its question id.

Where ROOT holds no JSON release but lmms-eval's parquet data set (`lmms-lab/GQA`), that is read
instead: the questions from `testdev_balanced_instructions/testdev-*.parquet` (`id`, `imageId`,
`question`, `answer`, `fullAnswer`, ...) and the images, embedded, from
`testdev_balanced_images/testdev-*.parquet` (`id` = the imageId, `image`), with the same checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from visionloom.data.errors import DatasetFormatError, all_or_refuse, resolve_inside
from visionloom.images import EmbeddedImage
from visionloom.pruning.benchmarks.parquet import parquet_files, read_rows
from visionloom.pruning.benchmarks.question import SHORT_ANSWER, BenchmarkQuestion

QUESTION_FILE = "testdev_balanced_questions.json"
# lmms-lab/GQA's two configurations of testdev-balanced, one folder of shards each.
PARQUET_QUESTIONS, PARQUET_IMAGES, PARQUET_SHARDS = (
    "testdev_balanced_instructions",
    "testdev_balanced_images",
    "testdev-*.parquet",
)


@dataclass(frozen=True)
class GqaQuestion:
    question_id: str
    image: Path | EmbeddedImage  # resolved, inside the image folder; or the parquet row's bytes
    text: str
    answer: str  # the release's short answer, compared exactly (GQA's eval.py)


def find_question_file(root: Path) -> Path | None:
    """The JSON release file, or None where ROOT holds the parquet data set instead."""
    for candidate in (root / QUESTION_FILE, root / "questions" / QUESTION_FILE):
        if candidate.is_file():
            return candidate
    if parquet_files(root / PARQUET_QUESTIONS, PARQUET_SHARDS):
        return None
    raise DatasetFormatError(
        f"{root}: no {QUESTION_FILE} (looked in {root} and {root / 'questions'}; it is in GQA's "
        f"questions1.2.zip) and no lmms-lab/GQA parquet shards ({root / PARQUET_QUESTIONS / PARQUET_SHARDS})"
    )


def _check_entry(question_id: str, entry: object, image_dir: Path) -> tuple[GqaQuestion | None, list[str]]:
    if not isinstance(entry, dict):
        return None, [f"question {question_id}: expected an object with imageId, question, answer"]
    problems = []
    for key in ("imageId", "question", "answer"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            problems.append(f"question {question_id}: {key} {entry.get(key)!r} is not a non-empty string")
    if problems:
        return None, problems
    image, why = resolve_inside(image_dir, f"{entry['imageId']}.jpg")
    if why is not None:
        return None, [f"question {question_id}: {why}"]
    if not image.is_file():
        return None, [f"question {question_id}: image {entry['imageId']}.jpg is not in {image_dir}"]
    return GqaQuestion(question_id, image, entry["question"], entry["answer"]), []


def read_gqa(root: str | Path, image_dir: str | Path | None = None) -> list[GqaQuestion]:
    """Every testdev-balanced question, checked; one DatasetFormatError listing every problem."""
    root = Path(root)
    question_file = find_question_file(root)
    if question_file is None:
        return read_gqa_parquet(root)
    images = Path(image_dir) if image_dir is not None else root / "images"
    if not images.is_dir():
        raise DatasetFormatError(f"{images}: no image folder; GQA's images.zip unpacks to images/")
    try:
        content = json.loads(question_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"{question_file}: not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise DatasetFormatError(
            f"{question_file}: not valid JSON ({error.msg}, line {error.lineno})"
        ) from None
    if not isinstance(content, dict):
        raise DatasetFormatError(f"{question_file}: expected an object of question id -> question")
    checked = (_check_entry(question_id, entry, images) for question_id, entry in content.items())
    return all_or_refuse(question_file, checked, "questions")


def read_gqa_parquet(root: Path) -> list[GqaQuestion]:
    """testdev-balanced from lmms-lab/GQA's parquet shards, every row checked as a JSON entry is."""
    image_shards = parquet_files(root / PARQUET_IMAGES, PARQUET_SHARDS)
    if not image_shards:
        raise DatasetFormatError(
            f"{root / PARQUET_IMAGES}: no {PARQUET_SHARDS}; lmms-lab/GQA keeps the images in that configuration"
        )
    images: dict[str, EmbeddedImage | None] = {}
    for row in read_rows(image_shards, ("id", "image"), image_column="image"):
        images[str(row["id"])] = row["image"]
    shards = parquet_files(root / PARQUET_QUESTIONS, PARQUET_SHARDS)
    seen: set[str] = set()

    def check(row: dict) -> tuple[GqaQuestion | None, list[str]]:
        where = f"{row['_source']} (question {row['id']})"
        problems = []
        for key in ("id", "imageId", "question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                problems.append(f"{where}: {key} {row.get(key)!r} is not a non-empty string")
        if problems:
            return None, problems
        if row["id"] in seen:
            return None, [f"{where}: question id {row['id']} appears twice"]
        seen.add(row["id"])
        image = images.get(row["imageId"])
        if image is None:
            return None, [f"{where}: image {row['imageId']!r} is not in {root / PARQUET_IMAGES}"]
        return GqaQuestion(row["id"], image, row["question"], row["answer"]), []

    rows = read_rows(shards, ("id", "imageId", "question", "answer"))
    return all_or_refuse(root / PARQUET_QUESTIONS, (check(row) for row in rows), "questions")


def questions(root: Path, subset: str = "random", image_dir: str | None = None) -> list[BenchmarkQuestion]:
    """GQA's testdev-balanced questions with the pruning papers' prompt (`subset` is POPE's only)."""
    return [
        BenchmarkQuestion(q.question_id, q.image, f"{q.text}\n{SHORT_ANSWER}", q.answer)
        for q in read_gqa(root, image_dir)
    ]


# ---------------------------------------------------------------- the answer rule and the metric
# Accuracy is exact match with the release's short answer (GQA's eval.py), after the normalisation
# LLaVA's convert_gqa_for_eval.py applies to a generated answer before that script: surrounding
# spaces and a final period removed, lower case.
def gqa_answer(text: str) -> str:
    """A generated answer as GQA's evaluation compares it (see the module docstring)."""
    return text.strip().rstrip(".").lower()


def gqa_metrics(answers: list[str], gold: list[str]) -> dict[str, float]:
    """{"accuracy"} in percent: normalised generated answers equal to the release's answers."""
    if len(answers) != len(gold):
        raise ValueError(f"{len(answers)} answers for {len(gold)} questions")
    if not gold:
        raise ValueError("no answers to score")
    return {
        "accuracy": 100.0 * sum(gqa_answer(a) == g for a, g in zip(answers, gold, strict=True)) / len(gold)
    }
