"""Answers of the scene VLM: token targets from scene texts, the loss, and exact-match accuracy.

Answer accuracy is exact match under greedy decoding. It is computed in one teacher-forced pass:
greedy decoding reproduces the answer exactly when, at every answer position (the end token
included), the arg-max given the true prefix is the true next token.
"""

from __future__ import annotations

import torch
from torch import nn

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.data.scenes import SceneCells, SceneText
from visionloom.images import read_rgb


class AnswerCollate:
    """SceneTexts -> {"inputs", "labels", "answer_labels"}: token targets [B, S], -100 where none.

    `labels` (the loss) are set on every text token after the image; `answer_labels` (accuracy)
    on the answer and its end token only.
    """

    def __init__(self, adapter: ImageTokenAdapter, cells: SceneCells | None = None):
        self.adapter = adapter
        self.cells = cells

    def __call__(self, texts: list[SceneText]) -> dict:
        tokenizer = self.adapter.tokenizer
        eos = tokenizer.eos_token
        images = [read_rgb(t.image_path) for t in texts]
        inputs = self.adapter.build_inputs(images, [f"{t.prompt} {t.answer}{eos}" for t in texts])
        answer_labels = torch.full_like(inputs.input_ids, -100)
        after_image = torch.zeros_like(inputs.attention_mask, dtype=torch.bool)
        for row, spans in enumerate(inputs.image_spans):
            after_image[row, spans[-1][1] :] = True
        after_image &= inputs.attention_mask.bool() & ~inputs.image_token_mask
        # Qwen's <|vision_end|> follows the image: it is a marker, not text to predict.
        vision_end = getattr(self.adapter.config, "vision_end_token_id", None)
        if vision_end is not None:
            after_image &= inputs.input_ids != vision_end
        labels = torch.where(after_image, inputs.input_ids, torch.full_like(inputs.input_ids, -100))
        for row, text in enumerate(texts):
            answer_ids = tokenizer(f" {text.answer}{eos}", add_special_tokens=False)["input_ids"]
            positions = inputs.attention_mask[row].nonzero().flatten()[-len(answer_ids) :]
            found = inputs.input_ids[row, positions].tolist()
            if found != answer_ids:  # a tokenizer that merges across the prompt/answer boundary
                raise ValueError(
                    f"{text.image_path.name}: the answer {text.answer!r} tokenizes to {answer_ids} alone but "
                    f"to {found} after its prompt"
                )
            answer_labels[row, positions] = inputs.input_ids[row, positions]
        batch = {"inputs": inputs, "labels": labels, "answer_labels": answer_labels}
        if self.cells is not None:
            per_image = [
                self.cells.labels(text.image_path, geometry.token_grid)
                for text, geometry in zip(texts, inputs.geometries, strict=True)
            ]
            batch["cell_colours"] = torch.cat([colour for colour, _ in per_image])  # [T]
            batch["cell_shapes"] = torch.cat([shape for _, shape in per_image])  # [T]
        return batch


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy where labels are set: position t predicts token t+1."""
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )


def answers_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool [B]: greedy decoding would give exactly the labelled answer (see the module docstring)."""
    predicted = logits[:, :-1].argmax(-1)  # [B, S-1]
    target = labels[:, 1:]
    wrong = (predicted != target) & (target != -100)
    return ~wrong.any(dim=1)
