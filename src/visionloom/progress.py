"""Progress a person can read: a rich bar on a terminal, plain lines when output is not one.

Under `| tee log`, `nohup`, a batch scheduler or CI, a rich bar prints nothing until it ends, so
a long job looks dead. There, `track` prints a line when a phase starts, at every tenth of the
way (count, percent, elapsed, ETA), and when it ends, as IRRA's and transformers' trainers log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
PLAIN_LINES_PER_PHASE = 10  # a line every tenth of the way...
PLAIN_LINE_MIN_SECONDS = 5.0  # ...but not more often than this: a quick phase gets its start and end


def is_terminal() -> bool:
    """Whether stdout is an interactive terminal (rich's own test, so bar and lines never both show)."""
    from rich.console import Console

    return Console(file=sys.stdout).is_terminal


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def plain(line: str) -> None:
    print(line, flush=True)


def track(
    items: Iterable[Item], description: str, total: int | None = None, disable: bool = False
) -> Iterable[Item]:
    """`items`, reporting progress as a bar (terminal) or as plain lines (otherwise)."""
    if disable:
        return items
    if is_terminal():
        from rich.progress import track as rich_track

        return rich_track(items, description=description, total=total)
    return _plain_track(items, description, total if total is not None else _length(items))


def _length(items: Iterable) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def _plain_track(items: Iterable[Item], description: str, total: int | None) -> Iterator[Item]:
    started = time.perf_counter()
    plain(f"{description}: started" + (f" ({total} items)" if total is not None else ""))
    next_report, done, last_line = 1, 0, started
    for item in items:
        yield item
        done += 1
        if total and done < total and done * PLAIN_LINES_PER_PHASE >= next_report * total:
            next_report = done * PLAIN_LINES_PER_PHASE // total + 1
            now = time.perf_counter()
            if now - last_line >= PLAIN_LINE_MIN_SECONDS:
                last_line, elapsed = now, now - started
                eta = elapsed / done * (total - done)
                plain(
                    f"{description}: {done}/{total} ({100 * done // total}%), {clock(elapsed)} elapsed, "
                    f"ETA {clock(eta)}"
                )
    plain(f"{description}: done, {done} items in {clock(time.perf_counter() - started)}")
