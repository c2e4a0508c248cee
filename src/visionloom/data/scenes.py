"""The synthetic scenes as text tasks for a VLM, and what lies under each image token.

    read_scene_folder(root)         the folder checked: images inside ROOT/images, annotations decodable
    read_scene_texts(root, split)   captions, questions, and "locate <expression>" -> location
    read_scene_splits(folder, ...)  the same for several splits from one reading
    SceneCells(folder)              per grid cell: the colour and shape covering it (warm-up labels)

The scenes are written by `synth_scenes.generate` (RefCOCO-style refs.json and COCO instances.json,
plus captions.json and qa.json). Pretraining, grounding and pruning all read them from here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from visionloom.config import read_json
from visionloom.data.errors import DatasetFormatError, all_or_refuse, listing, resolve_inside
from visionloom.data.refcoco import decode_segmentation, index_instances
from visionloom.data.synth_scenes import COLOURS, LOCATIONS, SHAPES, location_words, names_location
from visionloom.images import ImageReadError, read_rgb

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


@dataclass(frozen=True)
class SceneFolder:
    """A synth-scenes folder, checked: every image inside ROOT/images, every annotation decodable."""

    root: Path
    images: dict[int, dict]  # id -> the COCO image entry, with "path" resolved inside ROOT/images
    annotations: dict[int, dict]  # id -> the COCO annotation


def read_scene_folder(root: str | Path) -> SceneFolder:
    """The one reader of scene folders (pretraining, pruning, the cell labels): the COCO checks of
    the RefCOCO reader, and every `file_name` resolved inside ROOT/images (no absolute path, no
    `..`, no symlink out). Any problem refuses the folder, listing them all."""
    root = Path(root)
    if not (root / "instances.json").is_file():
        raise FileNotFoundError(
            f"{root}: no instances.json; expected a `visionloom data synth-scenes` directory"
        )
    images, annotations, problems = index_instances(root / "instances.json")
    for image_id, image in list(images.items()):
        path, why = resolve_inside(root / "images", image["file_name"])
        if why:
            problems.append(f"image {image_id}: {why}")
            del images[image_id]
        else:
            images[image_id] = {**image, "path": path}
    if problems:
        raise DatasetFormatError(f"{root / 'instances.json'}: {len(problems)} problem(s):{listing(problems)}")
    return SceneFolder(root, images, annotations)


def _entries(path: Path, keys: tuple[str, ...], images: dict[int, dict]) -> list[dict]:
    """The entries of captions.json, qa.json or refs.json, each with `keys` and a known image."""
    entries = read_json(path, DatasetFormatError) if path.is_file() else None
    if not isinstance(entries, list):
        raise DatasetFormatError(
            f"{path}: expected a list of entries (a `visionloom data synth-scenes` file)"
        )

    def check(index: int, entry: object) -> tuple[dict | None, list[str]]:
        if not isinstance(entry, dict) or any(key not in entry for key in keys):
            return None, [f"entry {index}: needs {', '.join(keys)}"]
        if not isinstance(entry["image_id"], (int, str)) or entry["image_id"] not in images:
            return None, [f"entry {index}: image_id {entry['image_id']!r} is not in instances.json"]
        return entry, []

    return all_or_refuse(path, (check(i, e) for i, e in enumerate(entries)), "entries")


def read_scene_texts(root: str | Path, split: str) -> list[SceneText]:
    """Captions, questions and where-questions about the referring expressions of one split."""
    return read_scene_splits(read_scene_folder(root), (split,))[split]


def read_scene_splits(folder: SceneFolder, splits: tuple[str, ...]) -> dict[str, list[SceneText]]:
    """`read_scene_texts` of several splits from one reading of the folder's files."""
    root, images, annotations = folder.root, folder.images, folder.annotations
    texts: dict[str, list[SceneText]] = {split: [] for split in splits}

    def path(image_id: int) -> Path:
        return images[image_id]["path"]

    for c in _entries(root / "captions.json", ("image_id", "split", "caption"), images):
        if c["split"] in texts:
            texts[c["split"]].append(
                SceneText(path(c["image_id"]), "<image>\ndescribe the scene.", str(c["caption"]), "caption")
            )
    for qa in _entries(root / "qa.json", ("image_id", "split", "question", "answer"), images):
        if qa["split"] in texts:
            question = str(qa["question"])
            words = question.split()
            # qa:how-many, qa:what-color, qa:what-shape, qa:is, qa:where
            kind = "-".join(words[:2]) if words[:1] in (["how"], ["what"]) else "".join(words[:1])
            texts[qa["split"]].append(
                SceneText(path(qa["image_id"]), f"<image>\n{question}", str(qa["answer"]), f"qa:{kind}")
            )
    for ref in _entries(root / "refs.json", ("image_id", "split", "ann_id", "sentences"), images):
        if ref["split"] not in texts:
            continue
        if ref["ann_id"] not in annotations:
            raise DatasetFormatError(
                f"{root / 'refs.json'}: ref {ref.get('ref_id')}: annotation {ref['ann_id']!r} is not in instances.json"
            )
        x, y, w, h = annotations[ref["ann_id"]]["bbox"]
        side = images[ref["image_id"]]["width"]
        location = location_words((x + w / 2, y + h / 2), side)
        for sentence in ref["sentences"] if isinstance(ref["sentences"], list) else []:
            text = sentence.get("sent") if isinstance(sentence, dict) else None
            if not isinstance(text, str) or names_location(text):
                continue  # no text, or the expression names its location (the answer in the question)
            texts[ref["split"]].append(
                SceneText(path(ref["image_id"]), DEFAULT_PROMPT.format(expression=text), location, "where")
            )
    for split, found in texts.items():
        if not found:
            raise DatasetFormatError(f"{root}: nothing in split {split!r}")
    return texts


def require_readable(images: list[Path], source: str | Path) -> None:
    """Every image decodes (`read_rgb`); one DatasetFormatError listing each that does not, before
    any work (a broken file found mid-run would stop it after minutes)."""
    problems = []
    for image in dict.fromkeys(images):
        try:
            read_rgb(image)
        except ImageReadError as error:
            problems.append(str(error))
    if problems:
        raise DatasetFormatError(f"{source}: {len(problems)} image(s) cannot be read:{listing(problems)}")


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

    def __init__(self, folder: SceneFolder | str | Path):
        self.decode = decode_segmentation
        folder = folder if isinstance(folder, SceneFolder) else read_scene_folder(folder)
        self.images = {image["path"]: image for image in folder.images.values()}
        self.annotations: dict[int, list[dict]] = defaultdict(list)
        for annotation in folder.annotations.values():
            self.annotations[annotation["image_id"]].append(annotation)
        self._cache: dict[tuple[Path, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]] = {}

    def labels(self, image_path: Path, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(colour ids, shape ids) of an image read by `read_scene_texts`, each long [h*w] in raster
        order; 0 is background."""
        key = (image_path, grid)
        if key not in self._cache:
            image = self.images[image_path]
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
