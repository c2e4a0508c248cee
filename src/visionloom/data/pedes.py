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

Annotation files are untrusted data. `validate_entries` checks every entry (field types, split
names, integer identities, captions as a list of non-empty strings, image paths that stay inside
ROOT/imgs once every symlink is followed, duplicates, identities in two splits) and returns all
problems at once; `read_pedes` refuses a file with any, and `data check` (data/check.py) reports
them together with the problems of the images themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visionloom.config import read_json
from visionloom.data.errors import DatasetFormatError, listing, resolve_inside

ANNOTATION_FILES = {
    "cuhk-pedes": "reid_raw.json",
    "icfg-pedes": "ICFG-PEDES.json",
    "rstpreid": "data_captions.json",
}
IMAGE_KEYS = {"cuhk-pedes": "file_path", "icfg-pedes": "file_path", "rstpreid": "img_path"}
VAL_FRACTION = 0.1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Problem:
    entry: int | None  # index in the annotation file; None for problems of the whole file
    file: str
    message: str

    def __str__(self) -> str:
        where = f"entry {self.entry}" if self.entry is not None else "data set"
        return f"{where}: {self.file}: {self.message}" if self.file else f"{where} {self.message}"


def refuse(annotation_file: Path, problems: list[Problem]) -> DatasetFormatError:
    """One error listing the first problems of a data set, and how to see them all."""
    return DatasetFormatError(
        f"{annotation_file}: {len(problems)} problem(s); nothing was trained or evaluated. "
        f"`visionloom data check {annotation_file.parent}` lists them all:{listing(problems)}"
    )


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


def read_annotations(root: Path, name: str | None = None) -> tuple[str, Path, list]:
    """The raw entries of a data set: its annotation file parsed, nothing checked per entry yet."""
    name = name or detect_format(root)
    annotation_file = root / ANNOTATION_FILES[name]
    entries = read_json(annotation_file, DatasetFormatError)
    if not isinstance(entries, list):
        raise DatasetFormatError(
            f"{annotation_file}: expected a list of entries, got {type(entries).__name__}"
        )
    return name, annotation_file, entries


@dataclass
class EntryCheck:
    """What `validate_entries` found."""

    by_split: dict[str, list[PedesImage]]  # the entries without a problem
    problems: list[Problem]
    # (entry, identity or None, image path) of every entry whose path stays inside ROOT/imgs,
    # problems or not: `data check` opens these images too, so one run reports everything.
    image_paths: list[tuple[int, int | None, Path]]


def validate_entries(root: Path, name: str, annotation_file: Path, entries: list) -> EntryCheck:
    """Every entry checked against the format's rules; every problem is collected."""
    image_key, image_root = IMAGE_KEYS[name], root / "imgs"
    required = ("split", "captions", image_key, "id")
    by_split: dict[str, list[PedesImage]] = {split: [] for split in SPLITS}
    problems: list[Problem] = []
    seen_paths: dict[Path, int] = {}
    splits_by_pid: dict[int, set[str]] = {}
    image_paths: list[tuple[int, int | None, Path]] = []
    if not entries:
        problems.append(Problem(None, str(annotation_file), "the annotation list is empty"))
    for index, entry in enumerate(entries):
        label = str(entry.get(image_key, "")) if isinstance(entry, dict) else ""

        def problem(message: str, index=index, label=label) -> None:
            problems.append(Problem(index, label, message))

        if not isinstance(entry, dict):
            problem(f"expected an object with {', '.join(required)}, got {type(entry).__name__}")
            continue
        missing = [key for key in required if key not in entry]
        if missing:
            problem(f"lacks {', '.join(missing)} (a {name} entry has {', '.join(required)})")
            continue
        split, pid, captions = entry["split"], entry["id"], entry["captions"]
        found = len(problems)
        if split not in SPLITS:
            problem(f"split {split!r}; expected one of {', '.join(SPLITS)}")
        pid_is_int = isinstance(pid, int) and not isinstance(pid, bool)
        if not pid_is_int:
            problem(f"identity {pid!r} is not an integer")
        if isinstance(captions, str):
            problem("captions is a single string; expected a list of strings")
        elif not isinstance(captions, list) or not captions:
            problem("no captions")
        else:
            for number, text in enumerate(captions):
                if not isinstance(text, str):
                    problem(f"caption {number} is {text!r}, not text")
                elif not text.strip():
                    problem(f"caption {number} is empty")
        resolved, why = resolve_inside(image_root, entry[image_key])
        if why:
            problem(why)
        elif resolved in seen_paths:
            problem(f"same image as entry {seen_paths[resolved]}")
        else:
            seen_paths[resolved] = index
            # The path as named (ROOT/imgs/<file>), now known to resolve inside ROOT/imgs.
            named = image_root / entry[image_key]
            image_paths.append((index, pid if pid_is_int else None, named))
        if len(problems) > found:
            continue
        splits_by_pid.setdefault(pid, set()).add(split)
        by_split[split].append(PedesImage(path=named, pid=pid, captions=tuple(captions), entry=index))
    for pid, splits in sorted(splits_by_pid.items()):
        if len(splits) > 1:
            problems.append(
                Problem(None, str(annotation_file), f"identity {pid} is in splits {sorted(splits)}")
            )
    return EntryCheck(by_split, problems, image_paths)


def read_pedes(root: str | Path, name: str | None = None) -> PedesDataset:
    """Read a data set in its released format; `name` is detected from the annotation file if omitted.

    Any problem of any entry refuses the whole file, listing them (see `validate_entries`).
    """
    root = Path(root)
    name, annotation_file, entries = read_annotations(root, name)
    checked = validate_entries(root, name, annotation_file, entries)
    if checked.problems:
        raise refuse(annotation_file, checked.problems)
    return dataset_from(root, name, annotation_file, checked.by_split)


def dataset_from(
    root: Path, name: str, annotation_file: Path, by_split: dict[str, list[PedesImage]]
) -> PedesDataset:
    """The data set from entries that passed `validate_entries`: splits, ICFG's carved validation,
    training identities renumbered."""
    by_split = dict(by_split)
    if not by_split["train"] or not by_split["test"]:
        raise DatasetFormatError(
            f"{annotation_file}: a {name} set needs train and test entries; found "
            + ", ".join(f"{split} {len(images)}" for split, images in by_split.items())
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
