"""The synthetic scenes as text tasks for a VLM, and what lies under each image token.

    read_scene_texts(root, split)   captions, questions, and "locate <expression>" -> location
    SceneCells(root)                per grid cell: the colour and shape covering it (warm-up labels)

The scenes are written by `synth_scenes.generate` (RefCOCO-style refs.json and COCO instances.json,
plus captions.json and qa.json). Pretraining, grounding and pruning all read them from here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from visionloom.data.refcoco import decode_segmentation
from visionloom.data.synth_scenes import COLOURS, LOCATIONS, SHAPES, location_words, names_location

# The prompt the scene VLM is taught ("locate <expression>" -> "top left"); the grounding head
# reads its attention with the same prompt. A real VLM takes any template with one {expression}.
DEFAULT_PROMPT = "<image>\nlocate {expression}"

# Classes of the per-cell warm-up labels: background + colours, background + shapes, locations.
CELL_CLASSES = len(COLOURS) + 1 + len(SHAPES) + 1 + len(LOCATIONS)


@dataclass(frozen=True)
class SceneText:
    image_path: Path
    prompt: str  # with the image marker
    answer: str
    task: str  # caption | qa:<kind> | where


def read_scene_texts(root: str | Path, split: str) -> list[SceneText]:
    """Captions, questions and where-questions about the referring expressions of one split."""
    root = Path(root)
    if not (root / "instances.json").is_file():
        raise FileNotFoundError(
            f"{root}: no instances.json; expected a `visionloom data synth-scenes` directory"
        )
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
            if names_location(sentence["sent"]):
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


def cell_places(grid: tuple[int, int]) -> torch.Tensor:
    """long [h*w]: the location word (thirds of the image) of each grid cell's centre, raster order."""
    rows, cols = grid
    return torch.tensor(
        [
            LOCATIONS.index(location_words(((col + 0.5) / cols, (row + 0.5) / rows), 1.0))
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
