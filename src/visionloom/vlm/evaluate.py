"""Exact-match answer accuracy of a VLM on scene texts, overall and per task (see vlm/answers.py)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import DataLoader

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.types import MultimodalInputs
from visionloom.data.scenes import SceneText
from visionloom.engine.samplers import Items
from visionloom.vlm.answers import AnswerCollate, answers_correct


@torch.no_grad()
def answer_accuracy(
    adapter: ImageTokenAdapter,
    texts: list[SceneText],
    batch_size: int = 64,
    progress: bool = False,
    by_kind: bool = False,
) -> dict[str, float]:
    """Exact-match accuracy (%) overall and per task (caption, qa, where); with `by_kind` also per
    kind of question (qa:what-color, qa:where, ...), which tells what a VLM reads from the image
    tokens and what it does not."""
    collate = AnswerCollate(adapter)
    loader = DataLoader(Items(texts), batch_size=batch_size, collate_fn=collate)
    correct: dict[str, list[bool]] = defaultdict(list)
    iterator = loader
    if progress:
        from visionloom.progress import track

        iterator = track(loader, description="answering")
    offset = 0
    for batch in iterator:
        inputs: MultimodalInputs = batch["inputs"].to(adapter.model.device)
        logits = adapter.forward(inputs).logits
        hits = answers_correct(logits, batch["answer_labels"].to(logits.device)).tolist()
        for text, hit in zip(texts[offset : offset + len(hits)], hits, strict=True):
            correct["all"].append(hit)
            correct[text.task.split(":")[0]].append(hit)
            if by_kind and ":" in text.task:
                correct[text.task].append(hit)
        offset += len(hits)
    return {task: 100.0 * float(np.mean(values)) for task, values in sorted(correct.items())}
