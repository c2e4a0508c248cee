"""`visionloom vlm pretrain`: teach a tiny VLM of a real class to see the synthetic scenes.

Attention of a randomly initialised model carries no grounding, so the grounding and pruning
systems need a VLM that has learned something. This trains a tiny preset (LLaVA or Qwen2.5-VL,
every weight trainable, from random) on the scenes' captions, questions and "locate <referring
expression>" -> location, and saves it as a normal checkpoint directory (`save_pretrained`,
processor included) that `backbones.load` reads back.

The language-model loss covers every text token after the image, the question included, not
only the answer. Predicting "circle" after "locate the red" needs a look at the red objects,
so the expression's own tokens learn to attend to what they name. In "locate" the location
follows the expression's last token directly, so that token has to find the referent. That
attention is what the grounding head reads, with the same prompt.

Answer accuracy is exact match under greedy decoding. It is computed in one teacher-forced
pass: greedy decoding reproduces the answer exactly when, at every answer position (the end
token included), the arg-max given the true prefix is the true next token.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from visionloom import config as config_io
from visionloom.backbones import load
from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.types import MultimodalInputs
from visionloom.config import NonNegativeFloat
from visionloom.data.build import RandomBatches
from visionloom.data.synth_scenes import COLOURS, SHAPES, location_words
from visionloom.engine.checkpoint import load_weights
from visionloom.engine.run import fingerprint, open_run, record_data
from visionloom.engine.trainer import TrainConfig, Trainer
from visionloom.grounding.attention import DEFAULT_PROMPT

FAMILY_PRESETS = {"llava": "tiny-llava", "qwen2.5-vl": "tiny-qwen2.5-vl"}
# Image side each family's tiny preset sees: LLaVA's processor resizes to 112 (8x8 tokens),
# Qwen2.5-VL keeps 224 (16x16 patches, 8x8 tokens after the 2x2 merge).
FAMILY_IMAGE_SIDE = {"llava": 224, "qwen2.5-vl": 224}


@dataclass
class PretrainConfig:
    family: Literal["llava", "qwen2.5-vl"] = "llava"
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=5000,
            batch_size=32,
            ids_per_batch=0,
            lr=3e-3,
            warmup_steps=100,
            checkpoint_every=500,
            eval_every=500,
            log_every=20,
        )
    )
    cell_weight: NonNegativeFloat = 1.0  # weight of the per-token colour/shape warm-up loss (0: off)
    seed: int = 0


@dataclass(frozen=True)
class SceneText:
    image_path: Path
    prompt: str  # with the image marker
    answer: str
    task: str  # caption | qa:<kind> | where


def read_scene_texts(root: str | Path, split: str) -> list[SceneText]:
    """Captions, questions and where-questions about the referring expressions of one split."""
    root = Path(root)
    instances = json.loads((root / "instances.json").read_text())
    images = {image["id"]: image for image in instances["images"]}
    annotations = {annotation["id"]: annotation for annotation in instances["annotations"]}

    def path(image_id: int) -> Path:
        return root / "images" / images[image_id]["file_name"]

    texts = [
        SceneText(path(c["image_id"]), "<image>\ndescribe the scene.", c["caption"], "caption")
        for c in json.loads((root / "captions.json").read_text())
        if c["split"] == split
    ]
    for qa in json.loads((root / "qa.json").read_text()):
        if qa["split"] == split:
            kind = qa["question"].split()[0] + ("-many" if qa["question"].startswith("how") else "")
            texts.append(
                SceneText(path(qa["image_id"]), f"<image>\n{qa['question']}", qa["answer"], f"qa:{kind}")
            )
    for ref in json.loads((root / "refs.json").read_text()):
        if ref["split"] != split:
            continue
        x, y, w, h = annotations[ref["ann_id"]]["bbox"]
        side = images[ref["image_id"]]["width"]
        location = location_words((x + w / 2, y + h / 2), side)
        for sentence in ref["sentences"]:
            if " at the " in sentence["sent"] or " in the " in sentence["sent"]:
                continue  # the expression names its location: the answer would be in the question
            texts.append(
                SceneText(
                    path(ref["image_id"]),
                    DEFAULT_PROMPT.format(expression=sentence["sent"]),
                    location,
                    "where",
                )
            )
    if not texts:
        raise ValueError(f"{root}: nothing in split {split!r}")
    return texts


PLACES = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
CELL_CLASSES = len(COLOURS) + 1 + len(SHAPES) + 1 + len(PLACES)


def cell_places(grid: tuple[int, int]) -> torch.Tensor:
    """long [h*w]: the location word (thirds of the image) of each grid cell's centre, raster order."""
    rows, cols = grid
    return torch.tensor(
        [
            PLACES.index(location_words(((col + 0.5) / cols, (row + 0.5) / rows), 1.0))
            for row in range(rows)
            for col in range(cols)
        ]
    )


class SceneCells:
    """Per image-token labels from the scene annotations: the colour and shape covering each grid cell.

    (With the cell's own location, from the grid alone, they are the warm-up targets.)

    A warm-up signal for a vision tower trained from random weights: with the answer loss alone
    the tiny model learns the language prior and barely looks (measured: answer accuracy stays at
    the blind level for thousands of steps). Labelling every image token with what lies under it
    makes the tokens carry colour and shape where the object is, which the language model then
    reads. The head that predicts them is not part of the saved VLM.
    """

    def __init__(self, root: str | Path):
        from visionloom.data.refcoco import decode_segmentation

        self.decode = decode_segmentation
        instances = json.loads((Path(root) / "instances.json").read_text())
        self.images = {image["file_name"]: image for image in instances["images"]}
        self.annotations: dict[int, list[dict]] = defaultdict(list)
        for annotation in instances["annotations"]:
            self.annotations[annotation["image_id"]].append(annotation)
        self.shape_names = {c["id"]: c["name"] for c in instances["categories"]}
        self._cache: dict[tuple[str, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]] = {}

    def labels(self, file_name: str, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(colour ids, shape ids), each long [h*w] in raster order; 0 is background."""
        key = (file_name, grid)
        if key not in self._cache:
            image = self.images[file_name]
            colour = torch.zeros(grid, dtype=torch.long)
            shape = torch.zeros(grid, dtype=torch.long)
            best = torch.full(grid, 0.3)  # a cell is an object's when it covers 30% or more
            for annotation in self.annotations[image["id"]]:
                mask = self.decode(annotation["segmentation"], image["height"], image["width"])
                cover = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask).float()[None], grid)[0]
                wins = cover > best
                best = torch.where(wins, cover, best)
                colour[wins] = 1 + list(COLOURS).index(annotation["attributes"]["colour"])
                shape[wins] = annotation["category_id"]
            self._cache[key] = (colour.flatten(), shape.flatten())
        return self._cache[key]


class SceneTextSet(Dataset):
    def __init__(self, texts: list[SceneText]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, key) -> SceneText:
        index = key[0] if isinstance(key, tuple) else key
        return self.texts[index]


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
        images = [Image.open(t.image_path).convert("RGB") for t in texts]
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
                self.cells.labels(text.image_path.name, geometry.token_grid)
                for text, geometry in zip(texts, inputs.geometries, strict=True)
            ]
            batch["cell_colours"] = torch.cat([colour for colour, _ in per_image])  # [T]
            batch["cell_shapes"] = torch.cat([shape for _, shape in per_image])  # [T]
        return batch


class AnswerModel(nn.Module):
    """The VLM as the trainer sees it: forward(batch) -> {"lm_loss", ["cell_loss"]} through the layer."""

    def __init__(self, adapter: ImageTokenAdapter, cell_weight: float = 0.0):
        super().__init__()
        self.adapter = adapter
        self.vlm = adapter.model  # registered, so the trainer optimises and checkpoints it
        self.cell_weight = cell_weight
        # Colour and shape of what lies under each image token (0: background); not saved with the VLM.
        self.cell_head = nn.Linear(adapter.text_width, CELL_CLASSES) if cell_weight else None

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        inputs = batch["inputs"]
        tokens = self.adapter.encode_images(inputs)  # one tower pass, shared by both losses
        logits = self.adapter.forward(inputs, tokens).logits  # [B, S, V]
        losses = {"lm_loss": answer_loss(logits, batch["labels"])}
        if self.cell_head is not None and "cell_colours" in batch:
            if any(g.grid_offsets is not None for g in tokens.geometries):
                raise ValueError(
                    "cell labels need image tokens in raster order of the grid (LLaVA, Qwen2.5-VL)"
                )
            cells = self.cell_head(tokens.embeds)  # [T, colours+1 + shapes+1 + places]
            colour_logits, shape_logits, place_logits = cells.split(
                [len(COLOURS) + 1, len(SHAPES) + 1, len(PLACES)], dim=-1
            )
            places = torch.cat([cell_places(g.token_grid) for g in tokens.geometries]).to(cells.device)
            cross_entropy = nn.functional.cross_entropy
            cell_loss = (
                cross_entropy(colour_logits, batch["cell_colours"])
                + cross_entropy(shape_logits, batch["cell_shapes"])
                + cross_entropy(place_logits, places)
            )
            losses["cell_loss"] = self.cell_weight * cell_loss
        return losses


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


@torch.no_grad()
def answer_accuracy(
    adapter: ImageTokenAdapter,
    texts: list[SceneText],
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """Exact-match accuracy (%) overall and per task."""
    collate = AnswerCollate(adapter)
    loader = DataLoader(SceneTextSet(texts), batch_size=batch_size, collate_fn=collate)
    correct: dict[str, list[bool]] = defaultdict(list)
    iterator = loader
    if progress:
        from rich.progress import track

        iterator = track(loader, description="answering")
    offset = 0
    for batch in iterator:
        inputs: MultimodalInputs = batch["inputs"].to(adapter.model.device)
        logits = adapter.forward(inputs).logits
        hits = answers_correct(logits, batch["answer_labels"].to(logits.device)).tolist()
        for text, hit in zip(texts[offset : offset + len(hits)], hits, strict=True):
            correct["all"].append(hit)
            correct[text.task.split(":")[0]].append(hit)
        offset += len(hits)
    return {task: 100.0 * float(np.mean(values)) for task, values in sorted(correct.items())}


def pretrain(
    root: str | Path,
    out: str | Path,
    config: PretrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train from random on the train split, select on val, save to `out`; report test accuracy.

    An `out` that already holds files is refused unless `resume` or `overwrite` is given.
    """
    if config.family not in FAMILY_PRESETS:
        raise ValueError(f"--family {config.family!r}: choose one of {', '.join(FAMILY_PRESETS)}")
    out = Path(out)
    root = Path(root)
    with open_run(out, resume=resume, overwrite=overwrite):
        config_io.save_run_config(out / "run", config, resume)
        record_data(out / "run", root, fingerprint(sorted(root.glob("*.json"))), resume=resume)
        adapter = load(FAMILY_PRESETS[config.family], seed=config.seed)
        adapter.model.train()
        train_texts = read_scene_texts(root, "train")
        val_texts = read_scene_texts(root, "val")
        sampler = RandomBatches(len(train_texts), config.train.batch_size, config.train.seed)
        cells = SceneCells(root) if config.cell_weight else None
        loader = DataLoader(
            SceneTextSet(train_texts), batch_sampler=sampler, collate_fn=AnswerCollate(adapter, cells)
        )
        model = AnswerModel(adapter, config.cell_weight)

        def validate(_model) -> dict[str, float]:  # the trainer switches the model to eval and back
            return answer_accuracy(adapter, val_texts)

        trainer = Trainer(
            model, loader, config.train, out / "run", validate=validate, select_key="all", progress=progress
        )
        result = trainer.fit(resume=resume)
        # The selected weights become the checkpoint directory.
        load_weights(model, out / "run" / "best" / "model.safetensors")
        adapter.model.eval()
        adapter.save_pretrained(out)
        report = {
            "family": config.family,
            "steps": result.step,
            "train_seconds": round(result.seconds, 1),
            "selected": result.best,
            "test_accuracy": answer_accuracy(adapter, read_scene_texts(root, "test"), progress=progress),
            "test_accuracy_random_weights": answer_accuracy(
                load(FAMILY_PRESETS[config.family], seed=config.seed), read_scene_texts(root, "test")
            ),
        }
        (out / "pretrain.json").write_text(json.dumps(report, indent=1))
    return report
