"""The released benchmarks `prune eval` answers by generating: POPE and GQA, one question list each.

Each benchmark reader (data/pope.py, data/gqa.py) checks its own files; here they become one list
of `BenchmarkQuestion`s, the prompt the pruning papers use (LLaVA's evaluation prompts: the
question, then "Answer the question using a single word or phrase."), and the benchmark's metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from visionloom.pruning.metrics import gqa_metrics, pope_metrics

# LLaVA's llava_pope_test.jsonl and llava_gqa_testdev_balanced.jsonl append this to every question.
SHORT_ANSWER = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class BenchmarkQuestion:
    question_id: str
    image: Path
    question: str  # the prompt's text: the benchmark's question and the instruction
    gold: str  # POPE's label (yes/no) or GQA's answer


def read_benchmark(
    benchmark: str, root: Path, *, subset: str = "random", image_dir: str | None = None
) -> list[BenchmarkQuestion]:
    if benchmark == "pope":
        from visionloom.data.pope import read_pope

        return [
            BenchmarkQuestion(str(q.question_id), q.image, f"{q.text}\n{SHORT_ANSWER}", q.label)
            for q in read_pope(root, subset, image_dir)
        ]
    if benchmark == "gqa":
        from visionloom.data.gqa import read_gqa

        return [
            BenchmarkQuestion(q.question_id, q.image, f"{q.text}\n{SHORT_ANSWER}", q.answer)
            for q in read_gqa(root, image_dir)
        ]
    raise ValueError(f"benchmark {benchmark!r} is not one of {', '.join(METRICS)}")


# answers (generated texts) and gold answers -> metrics in percent, "accuracy" first.
METRICS: dict[str, Callable[[list[str], list[str]], dict[str, float]]] = {
    "pope": pope_metrics,
    "gqa": gqa_metrics,
}
