"""The released benchmarks `prune eval` answers by generating, one module each, as lmms-eval keeps
a task: its reader (every entry checked), its prompt, its answer rule and its metric.

    pope.py   POPE (coco_pope_{random,popular,adversarial}.json, COCO val2014)
    gqa.py    GQA testdev-balanced (questions1.2, images)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from visionloom.pruning.benchmarks import gqa, pope
from visionloom.pruning.benchmarks.question import SHORT_ANSWER, BenchmarkQuestion

__all__ = ["BENCHMARKS", "METRICS", "SHORT_ANSWER", "BenchmarkQuestion", "read_benchmark"]

# name -> the module: questions(root, subset, image_dir), and its metric.
BENCHMARKS = {"pope": pope, "gqa": gqa}

# answers (generated texts) and gold answers -> metrics in percent, "accuracy" first.
METRICS: dict[str, Callable[[list[str], list[str]], dict[str, float]]] = {
    "pope": pope.pope_metrics,
    "gqa": gqa.gqa_metrics,
}


def read_benchmark(
    benchmark: str, root: Path, *, subset: str = "random", image_dir: str | None = None
) -> list[BenchmarkQuestion]:
    """The benchmark's questions, checked, with its prompt."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark!r} is not one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[benchmark].questions(root, subset, image_dir)
