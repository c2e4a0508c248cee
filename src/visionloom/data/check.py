"""`visionloom data check ROOT`: every problem of a person-retrieval data set, before training starts.

A training run that dies at hour three on one unreadable image, or that quietly learns from empty
captions, costs more than reading every entry once. Each problem names the annotation entry and the
file; all of them are reported, not only the first. The entries are checked by the reader's own
rules (`pedes.validate_entries`), and `retrieval train` and `eval` run this same check before any
work, so what passes here is what training can use.

Image sizes are summarised, not judged: the released sets mix images from several source data sets
and training resizes every image, so only an explicit `expected_size` makes a size a problem.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from visionloom.data.errors import DatasetFormatError
from visionloom.data.pedes import (
    IMAGE_KEYS,
    PedesDataset,
    PedesImage,
    Problem,
    dataset_from,
    read_annotations,
    refuse,
    validate_entries,
)
from visionloom.images import ImageReadError, read_rgb


@dataclass
class SizeSummary:
    """How many images have each (height, width)."""

    counts: Counter = field(default_factory=Counter)

    def describe(self, most_common: int = 5) -> str:
        """One line: image count, distinct sizes, min/median/max per side, the most common sizes."""
        if not self.counts:
            return "no readable images"
        sizes = list(self.counts.elements())
        heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
        common = ", ".join(f"{h}x{w} ({n})" for (h, w), n in self.counts.most_common(most_common))
        return (
            f"{len(sizes)} images in {len(self.counts)} size(s); height min/median/max "
            f"{min(heights)}/{median(heights):g}/{max(heights)}, width {min(widths)}/{median(widths):g}/"
            f"{max(widths)}; most common: {common}"
        )


@dataclass
class DataCheck:
    """What `check_pedes` found: the format, every problem, and the image sizes."""

    name: str
    problems: list[Problem]
    sizes: SizeSummary
    annotation_file: Path | None = None  # None: the annotation file itself could not be read
    by_split: dict[str, list[PedesImage]] = field(default_factory=dict)  # the entries without a problem


def image_problem(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """((height, width), None) for an image that decodes completely, else (None, why)."""
    if path.is_symlink() and not path.exists():
        return None, "image file is a broken link"
    if not path.is_file():
        return None, "image file missing"
    try:
        # Decoded completely (verify() does not decode JPEG data, so truncation would pass it) and
        # turned as training reads it: upright by EXIF, 16-bit scaled, unknown ranges refused.
        image = read_rgb(path)
    except ImageReadError as error:
        return None, str(error).removeprefix(f"{path}: ")
    return (image.height, image.width), None


def check_pedes(
    root: str | Path, expected_size: tuple[int, int] | None = None, progress: Iterable | None = None
) -> DataCheck:
    """Every problem of the data set at `root`, and a summary of its image sizes.

    The entries go through `validate_entries` (the reader's own rules); every image is then opened
    and decoded completely. `expected_size` (height, width) makes every image of another size a
    problem; without it sizes are only summarised (mixed sizes are normal in the released sets).
    """
    root = Path(root)
    try:
        name, annotation_file, entries = read_annotations(root)
    except (FileNotFoundError, DatasetFormatError) as error:
        return DataCheck("unknown", [Problem(None, str(root), str(error))], SizeSummary())
    checked = validate_entries(root, name, annotation_file, entries)
    problems = list(checked.problems)  # the entries' problems, then the images'
    sizes: dict[int, tuple[int, int]] = {}
    usable_by_pid: dict[int, int] = defaultdict(int)
    images = checked.image_paths
    indices = range(len(images)) if progress is None else progress(range(len(images)))
    for position in indices:
        entry, pid, path = images[position]
        if pid is not None:
            usable_by_pid.setdefault(pid, 0)
        size, reason = image_problem(path)
        label = str(entries[entry][IMAGE_KEYS[name]])
        if reason:
            problems.append(Problem(entry, label, reason))
            continue
        if expected_size is not None and size != expected_size:
            problems.append(
                Problem(
                    entry,
                    label,
                    f"size {size[0]}x{size[1]} (height x width); expected {expected_size[0]}x{expected_size[1]}",
                )
            )
        sizes[entry] = size
        if pid is not None:
            usable_by_pid[pid] += 1
    for pid, usable in sorted(usable_by_pid.items()):
        if usable == 0:
            problems.append(Problem(None, str(annotation_file), f"identity {pid} has no usable image"))
    for split in ("train", "test"):  # what training refuses (val may be carved from train)
        if not checked.by_split.get(split):
            problems.append(
                Problem(
                    None, str(annotation_file), f"has no {split} entries; a {name} set needs train and test"
                )
            )
    problems.sort(key=lambda problem: (problem.entry is None, problem.entry or 0))
    return DataCheck(name, problems, SizeSummary(Counter(sizes.values())), annotation_file, checked.by_split)


def require_usable(root: str | Path, progress: Iterable | None = None) -> PedesDataset:
    """The data set at `root`, after `check_pedes` found no problem; otherwise an error listing them,
    before any work. The annotations are read once, for the check and the data set alike."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a directory")
    report = check_pedes(root, progress=progress)
    if report.annotation_file is None:  # the annotation file itself: its one problem says why
        raise DatasetFormatError(report.problems[0].message)
    if report.problems:
        raise refuse(report.annotation_file, report.problems)
    return dataset_from(root, report.name, report.annotation_file, report.by_split)
