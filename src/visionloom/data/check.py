"""`visionloom data check ROOT`: every problem of a person-retrieval data set, before training starts.

A training run that dies at hour three on one unreadable image, or that quietly learns from empty
captions, costs more than reading every entry once. Each problem names the annotation entry and the
file; all of them are reported, not only the first.

Image sizes are summarised, not judged: the released sets mix images from several source data sets
and training resizes every image, so only an explicit `expected_size` makes a size a problem.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from PIL import Image, UnidentifiedImageError

from visionloom.data.pedes import IMAGE_KEYS, DatasetFormatError, read_annotations


@dataclass(frozen=True)
class Problem:
    entry: int | None  # index in the annotation file; None for problems of the whole file
    file: str
    message: str

    def __str__(self) -> str:
        where = f"entry {self.entry}" if self.entry is not None else "data set"
        return f"{where}: {self.file}: {self.message}"


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


def _image_size(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(height, width) or the reason the image cannot be read."""
    if not path.is_file():
        return None, "image file missing"
    try:
        with Image.open(path) as image:
            size = (image.height, image.width)
            image.verify()  # decodes the stream's structure without keeping pixels
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        return None, f"unreadable image ({type(error).__name__}: {error})"
    return size, None


def check_pedes(
    root: str | Path, expected_size: tuple[int, int] | None = None, progress: Iterable | None = None
) -> DataCheck:
    """Every problem of the data set at `root`, and a summary of its image sizes.

    `expected_size` (height, width) makes every image of another size a problem; without it sizes
    are only summarised (mixed sizes are normal in the released sets).
    """
    root = Path(root)
    try:
        name, annotation_file, entries = read_annotations(root)
    except (FileNotFoundError, DatasetFormatError) as error:
        return DataCheck("unknown", [Problem(None, str(root), str(error))], SizeSummary())
    image_key = IMAGE_KEYS[name]
    problems: list[Problem] = []
    sizes: dict[int, tuple[int, int]] = {}
    usable_by_pid: dict[int, int] = defaultdict(int)
    splits_by_pid: dict[int, set[str]] = defaultdict(set)
    seen_paths: dict[str, int] = {}
    indices = range(len(entries)) if progress is None else progress(range(len(entries)))
    for index in indices:
        entry = entries[index]
        relative = str(entry[image_key])
        try:
            pid = int(entry["id"])
        except (TypeError, ValueError):
            problems.append(Problem(index, relative, f"identity {entry['id']!r} is not an integer"))
            continue
        splits_by_pid[pid].add(str(entry["split"]))
        usable_by_pid.setdefault(pid, 0)
        if relative in seen_paths:
            problems.append(Problem(index, relative, f"same image as entry {seen_paths[relative]}"))
        seen_paths[relative] = index
        captions = entry["captions"]
        if not isinstance(captions, list) or not captions:
            problems.append(Problem(index, relative, "no captions"))
        else:
            for number, text in enumerate(captions):
                if not isinstance(text, str) or not text.strip():
                    problems.append(Problem(index, relative, f"caption {number} is empty"))
        size, reason = _image_size(root / "imgs" / relative)
        if reason:
            problems.append(Problem(index, relative, reason))
            continue
        sizes[index] = size
        usable_by_pid[pid] += 1

    if expected_size is not None:
        for index, size in sizes.items():
            if size != expected_size:
                problems.append(
                    Problem(
                        index,
                        str(entries[index][image_key]),
                        f"size {size[0]}x{size[1]} (height x width); expected {expected_size[0]}x{expected_size[1]}",
                    )
                )
    for pid, usable in sorted(usable_by_pid.items()):
        if usable == 0:
            problems.append(Problem(None, str(annotation_file), f"identity {pid} has no usable image"))
        if len(splits_by_pid[pid]) > 1:
            problems.append(
                Problem(
                    None, str(annotation_file), f"identity {pid} is in splits {sorted(splits_by_pid[pid])}"
                )
            )
    problems.sort(key=lambda problem: (problem.entry is None, problem.entry or 0))
    return DataCheck(name, problems, SizeSummary(Counter(sizes.values())))
