"""Readers for the text-based person retrieval benchmarks in their released formats.

    CUHK-PEDES   ROOT/reid_raw.json        {"split", "captions", "file_path", "id"}   images in ROOT/imgs
    ICFG-PEDES   ROOT/ICFG-PEDES.json      {"split", "captions", "file_path", "id"}   images in ROOT/imgs
    RSTPReid     ROOT/data_captions.json   {"split", "captions", "img_path", "id"}    images in ROOT/imgs

Splits and identity numbering follow IRRA's loaders (datasets/cuhkpedes.py and siblings): training
identities are renumbered 0..N-1 (IRRA subtracts 1 from CUHK's ids and asserts they are then
contiguous; here they are remapped in sorted order, which is the same mapping on the real files and
does not break on a gappy subset); every (image, caption) pair is one training sample; at
evaluation every image is a gallery item and every caption is its own query.

ICFG-PEDES ships no validation split and IRRA validates on its test split. That is the
checkpoint-selection-on-test mistake, so here a validation split is carved from the training
identities instead (the last `VAL_FRACTION` of them in id order) and the report says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ANNOTATION_FILES = {
    "cuhk-pedes": "reid_raw.json",
    "icfg-pedes": "ICFG-PEDES.json",
    "rstpreid": "data_captions.json",
}
IMAGE_KEYS = {"cuhk-pedes": "file_path", "icfg-pedes": "file_path", "rstpreid": "img_path"}
VAL_FRACTION = 0.1


class DatasetFormatError(ValueError):
    """An annotation file that does not have the fields its format requires."""


@dataclass(frozen=True)
class PedesImage:
    """One annotated image: where it is, whose it is, what is said about it."""

    path: Path
    pid: int  # the data set's own identity id (remapped for training splits, see module docstring)
    captions: tuple[str, ...]
    entry: int  # index of the entry in the annotation file, for error messages


@dataclass
class PedesSplit:
    """One split: its images; `pairs()` flattens to training samples, `queries()` to test queries."""

    name: str
    images: list[PedesImage]
    notes: list[str] = field(default_factory=list)

    @property
    def num_identities(self) -> int:
        return len({image.pid for image in self.images})

    def pairs(self) -> list[tuple[int, int, str]]:
        """(image index, pid, caption) for every caption: IRRA's training samples."""
        return [
            (index, image.pid, text) for index, image in enumerate(self.images) for text in image.captions
        ]

    def queries(self) -> tuple[list[str], list[int]]:
        """Every caption is its own query: (captions, their pids)."""
        captions = [text for image in self.images for text in image.captions]
        pids = [image.pid for image in self.images for _ in image.captions]
        return captions, pids


@dataclass
class PedesDataset:
    name: str
    root: Path
    annotation_file: Path
    splits: dict[str, PedesSplit]

    @property
    def image_root(self) -> Path:
        return self.root / "imgs"

    def __getitem__(self, split: str) -> PedesSplit:
        if split not in self.splits:
            raise KeyError(f"{self.name} has no split {split!r}; splits: {', '.join(self.splits)}")
        return self.splits[split]


def detect_format(root: Path) -> str:
    """The benchmark whose annotation file is in `root`."""
    found = [name for name, filename in ANNOTATION_FILES.items() if (root / filename).is_file()]
    if not found:
        expected = ", ".join(f"{filename} ({name})" for name, filename in ANNOTATION_FILES.items())
        raise FileNotFoundError(f"{root}: no annotation file; expected one of {expected}")
    if len(found) > 1:
        raise DatasetFormatError(
            f"{root}: annotation files of several formats ({', '.join(found)}); keep one"
        )
    return found[0]


def read_annotations(root: Path, name: str | None = None) -> tuple[str, Path, list[dict]]:
    """The raw entries of a data set, after checking that each has the fields its format needs."""
    name = name or detect_format(root)
    annotation_file = root / ANNOTATION_FILES[name]
    try:
        entries = json.loads(annotation_file.read_text())
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{annotation_file}: not valid JSON ({error})") from None
    if not isinstance(entries, list):
        raise DatasetFormatError(
            f"{annotation_file}: expected a list of entries, got {type(entries).__name__}"
        )
    required = ("split", "captions", IMAGE_KEYS[name], "id")
    for index, entry in enumerate(entries):
        missing = [key for key in required if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise DatasetFormatError(
                f"{annotation_file}: entry {index} lacks {', '.join(missing)} (a {name} entry has {', '.join(required)})"
            )
    return name, annotation_file, entries


def read_pedes(root: str | Path, name: str | None = None) -> PedesDataset:
    """Read a data set in its released format; `name` is detected from the annotation file if omitted."""
    root = Path(root)
    name, annotation_file, entries = read_annotations(root, name)
    image_key = IMAGE_KEYS[name]
    by_split: dict[str, list[PedesImage]] = {"train": [], "val": [], "test": []}
    for index, entry in enumerate(entries):
        split = str(entry["split"]).lower()
        if split not in by_split:
            raise DatasetFormatError(
                f"{annotation_file}: entry {index} has split {split!r}; expected train, val or test"
            )
        captions = entry["captions"]
        if isinstance(captions, str):
            captions = [captions]
        by_split[split].append(
            PedesImage(
                path=root / "imgs" / entry[image_key],
                pid=int(entry["id"]),
                captions=tuple(str(text) for text in captions),
                entry=index,
            )
        )
    notes = []
    if not by_split["val"]:
        by_split["train"], by_split["val"] = carve_validation(by_split["train"])
        notes.append(
            f"{name} has no validation split: validation is the last {VAL_FRACTION:.0%} of the training "
            f"identities ({len({im.pid for im in by_split['val']})}), never the test split"
        )
    by_split["train"] = remap_identities(by_split["train"])
    splits = {split: PedesSplit(split, images, list(notes)) for split, images in by_split.items()}
    return PedesDataset(name=name, root=root, annotation_file=annotation_file, splits=splits)


def remap_identities(images: list[PedesImage]) -> list[PedesImage]:
    """Training identities renumbered 0..N-1 in the order of their original ids."""
    mapping = {pid: new for new, pid in enumerate(sorted({image.pid for image in images}))}
    return [PedesImage(im.path, mapping[im.pid], im.captions, im.entry) for im in images]


def carve_validation(train: list[PedesImage]) -> tuple[list[PedesImage], list[PedesImage]]:
    pids = sorted({image.pid for image in train})
    held_out = set(pids[len(pids) - max(1, round(len(pids) * VAL_FRACTION)) :])
    return [im for im in train if im.pid not in held_out], [im for im in train if im.pid in held_out]
