"""`visionloom retrieval search`: rank a split's gallery for one text query and draw the ranking as a PNG grid."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from visionloom.data.pedes import PedesSplit
from visionloom.retrieval.datasets import load_image
from visionloom.retrieval.evaluate import encode_gallery, encode_queries


@dataclass
class Hit:
    rank: int
    index: int  # into split.images
    pid: int
    score: float
    path: Path


def search(
    model, split: PedesSplit, query: str, top: int = 10, gallery: torch.Tensor | None = None
) -> list[Hit]:
    """The `top` gallery images most similar to `query`, best first."""
    gallery = encode_gallery(model, split) if gallery is None else gallery  # [G, E]
    text = encode_queries(model, [query])  # [1, E]
    scores = (text @ gallery.t())[0]  # [G]
    best = torch.topk(scores, min(top, len(scores)))
    return [
        Hit(rank + 1, int(i), split.images[int(i)].pid, float(s), split.images[int(i)].path)
        for rank, (s, i) in enumerate(zip(best.values, best.indices, strict=True))
    ]


def known_pid(split: PedesSplit, query: str) -> int | None:
    """The identity of `query` when it is one of the split's own captions."""
    for image in split.images:
        if query in image.captions:
            return image.pid
    return None


def draw_grid(query: str, hits: list[Hit], out: Path, true_pid: int | None = None, thumb=(192, 64)) -> Path:
    """Query on top, ranked images below; green frame = the query's identity, red = another (when known)."""
    height, width = thumb
    pad, header = 6, 64
    canvas = Image.new("RGB", (pad + len(hits) * (width + pad), header + height + 22 + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)  # Pillow's bundled TrueType font: no system fonts needed
    draw.multiline_text(
        (pad, 4), "\n".join(textwrap.wrap(f"query: {query}", 100)[:3]), fill="black", font=font
    )
    for column, hit in enumerate(hits):
        x = pad + column * (width + pad)
        canvas.paste(load_image(hit.path, thumb), (x, header))
        if true_pid is not None:
            colour = (20, 170, 40) if hit.pid == true_pid else (210, 30, 30)
            draw.rectangle([x - 3, header - 3, x + width + 2, header + height + 2], outline=colour, width=3)
        draw.text((x, header + height + 5), f"#{hit.rank} {hit.score:.2f}", fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
