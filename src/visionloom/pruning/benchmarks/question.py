"""One question of a released benchmark, as `prune eval` asks it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionloom.images import EmbeddedImage

# LLaVA's llava_pope_test.jsonl and llava_gqa_testdev_balanced.jsonl append this to every question.
SHORT_ANSWER = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class BenchmarkQuestion:
    question_id: str
    image: Path | EmbeddedImage  # a file, or the bytes a parquet row holds
    question: str  # the prompt's text: the benchmark's question and the instruction
    gold: str  # POPE's label (yes/no) or GQA's answer
