"""The errors every reader of a data set raises, and the two rules they share.

DatasetFormatError      a file, entry or field that is not what its format requires
resolve_inside(root, p) a path an annotation names, followed through every symlink, refused
                        when it leaves its root (absolute, `..`, a link pointing out)
all_or_refuse           a file checked entry by entry: every problem listed, or its items
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

SHOWN_PROBLEMS = 20  # problems listed in an error message; `data check` lists them all


class DatasetFormatError(ValueError):
    """An annotation file that does not have the fields its format requires."""


def listing(problems: list) -> str:
    """The first SHOWN_PROBLEMS problems, one indented line each, and how many more there are."""
    shown = "".join(f"\n  {problem}" for problem in problems[:SHOWN_PROBLEMS])
    more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return shown + more


def all_or_refuse(source: Path, checked: Iterable[tuple[Any, list[str]]], what: str) -> list:
    """The items of a file checked entry by entry (each entry: the item or None, and its problems).
    One DatasetFormatError listing every problem, or saying the file holds no `what`."""
    items, problems = [], []
    for item, found in checked:
        problems += found
        if item is not None:
            items.append(item)
    if problems:
        raise DatasetFormatError(f"{source}: {len(problems)} problem(s):{listing(problems)}")
    if not items:
        raise DatasetFormatError(f"{source}: no {what}")
    return items


def resolve_inside(root: Path, relative: object) -> tuple[Path | None, str | None]:
    """(root / relative with every symlink followed, None), or (None, why) when that path would
    leave `root` (an absolute path, `..`, a link pointing out) or cannot be resolved."""
    if not isinstance(relative, str) or not relative.strip():
        return None, f"image path {relative!r} is not a file name"
    if Path(relative).is_absolute():
        return None, f"image path {relative!r} is absolute; paths are relative to {root}"
    base = root.resolve()
    try:
        resolved = (base / relative).resolve()
    except (RuntimeError, OSError) as error:  # Python raises RuntimeError on a symlink loop
        return None, f"image path {relative!r} cannot be resolved: {error}"
    if not resolved.is_relative_to(base):
        return None, f"image path {relative!r} leads to {resolved}, outside {base}"
    return resolved, None
