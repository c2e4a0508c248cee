"""Benchmarks as most people now download them: the parquet data sets lmms-eval reads
(`lmms-lab/POPE`, `lmms-lab/GQA`), read with `datasets` as lmms-eval reads them.

Images stay encoded (`EmbeddedImage`: the row's bytes, named by file and row) until a batch decodes
them with `read_rgb`, the same reader as image files. Rows come back as plain dicts with the file
and row they came from, for the benchmark's own checks to name.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from visionloom.data.errors import DatasetFormatError
from visionloom.images import EmbeddedImage


def parquet_files(folder: Path, pattern: str) -> list[Path]:
    """The shards `pattern` matches in `folder`, in name order (`test-00000-of-00003.parquet`, ...)."""
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """A library's logger silenced for the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_rows(
    files: list[Path], columns: tuple[str, ...], image_column: str | None = None
) -> list[dict[str, Any]]:
    """Every row of the shards, in order, as dicts of `columns`; the image column as an
    `EmbeddedImage` (or None where the row has no bytes). A shard without one of the columns is
    one DatasetFormatError naming it and the columns it has."""
    # Imported here: reading parquet is the only use, and `datasets` takes a while to import.
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    rows: list[dict[str, Any]] = []
    for file in files:
        # A private cache, removed after reading: the shards are read once, into memory.
        with tempfile.TemporaryDirectory(prefix="visionloom-parquet-") as cache:
            try:
                with _quiet("datasets"):  # its own report of a bad file would repeat the line below
                    table = load_dataset(
                        "parquet", data_files=str(file), split="train", cache_dir=cache, keep_in_memory=True
                    )
            except Exception as error:  # noqa: BLE001 - pyarrow's and datasets' errors: a file that is not parquet
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise DatasetFormatError(f"{file}: not a readable parquet file ({first})") from None
            missing = [column for column in columns if column not in table.column_names]
            if missing:
                raise DatasetFormatError(
                    f"{file}: no column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}"
                )
            if image_column is not None:
                table = table.cast_column(image_column, ImageFeature(decode=False))
            for index, row in enumerate(table.select_columns(list(columns))):
                entry = {"_source": f"{file.name} row {index}", **row}
                if image_column is not None:
                    data = (row.get(image_column) or {}).get("bytes")
                    entry[image_column] = EmbeddedImage(entry["_source"], data) if data else None
                rows.append(entry)
    return rows
