"""Frozen features of a split, computed once: the VLM's attention and hidden states, SAM's image embeddings.

Both models are frozen, so their outputs are the same on every epoch; computing them once makes
training the head cost what the head costs. Nothing here keeps a reference to the VLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.data.refcoco import RefSample
from visionloom.data.scenes import DEFAULT_PROMPT
from visionloom.grounding.attention import ExpressionFeatures, collect
from visionloom.grounding.model import GroundingBatch
from visionloom.grounding.sam import SamRefiner
from visionloom.images import ImageReadError, read_rgb


@dataclass
class SampleFeatures(ExpressionFeatures):
    """An expression's frozen features (attention, hidden states, padding) and what its sample adds."""

    name: str
    mask: torch.Tensor  # bool [H, W], the target
    sam_embedding: torch.Tensor | None  # [C, e, e], SAM's image embedding
    sam_size: torch.Tensor | None  # [2]


def sample_name(sample: RefSample) -> str:
    return f"{sample.image_path.name} ref {sample.ref_id} sentence {sample.sent_id} ({sample.expression!r})"


def read_sample_image(sample: RefSample) -> Image.Image:
    try:
        image = read_rgb(sample.image_path)
    except ImageReadError as error:
        raise ImageReadError(f"{sample_name(sample)}: {error}") from None
    if image.size != (sample.width, sample.height):
        raise ValueError(
            f"{sample.image_path}: {image.width}x{image.height} but the annotations say "
            f"{sample.width}x{sample.height}"
        )
    return image


def compute_features(
    adapter: ImageTokenAdapter,
    samples: list[RefSample],
    refiner: SamRefiner | None,
    *,
    prompt: str = DEFAULT_PROMPT,
    merge: str = "mean",
    text_layers: int = 2,
    image_side: int | None = None,
    batch_size: int = 32,
    description: str = "features",
    progress: bool = True,
) -> list[SampleFeatures]:
    adapter.model.eval()
    starts = range(0, len(samples), batch_size)
    if progress:
        from visionloom.progress import track

        starts = track(
            starts, description=f"{description}: {len(samples)} expressions through the frozen VLM"
        )
    sam_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    features = []
    for start in starts:
        chunk = samples[start : start + batch_size]
        images = [read_sample_image(sample) for sample in chunk]
        names = [sample_name(sample) for sample in chunk]
        collected = collect(
            adapter,
            images,
            [s.expression for s in chunk],
            names=names,
            prompt=prompt,
            merge=merge,
            text_layers=text_layers,
            image_side=image_side,
        )
        if refiner is not None:
            new = {  # each image once, however many expressions it has
                str(s.image_path): image
                for s, image in zip(chunk, images, strict=True)
                if str(s.image_path) not in sam_cache
            }
            if new:
                embeddings, sizes = refiner.embed_images(list(new.values()))
                sam_cache.update(zip(new, zip(embeddings, sizes, strict=True), strict=True))
        for sample, name, item in zip(chunk, names, collected, strict=True):
            sam_embedding, sam_size = sam_cache.get(str(sample.image_path), (None, None))
            features.append(
                SampleFeatures(
                    **vars(item),
                    name=name,
                    mask=torch.from_numpy(sample.mask()),
                    sam_embedding=sam_embedding,
                    sam_size=sam_size,
                )
            )
    return features


def collate(items: list[SampleFeatures]) -> dict[str, GroundingBatch]:
    grids = {tuple(item.attention.shape[-2:]) for item in items}
    if len(grids) > 1:
        by_grid = {
            grid: next(i.name for i in items if tuple(i.attention.shape[-2:]) == grid) for grid in grids
        }
        raise ValueError(
            "attention maps on different token grids in one batch ("
            + "; ".join(f"{h}x{w}: {name}" for (h, w), name in sorted(by_grid.items()))
            + "): this VLM's processor keeps each image's size; set image_side (e.g. image_side=672) "
            "so every image gets the same grid"
        )
    with_sam = items[0].sam_embedding is not None
    return {
        "features": GroundingBatch(
            attention=torch.stack([item.attention for item in items]),
            hidden=[item.hidden for item in items],
            paddings=[item.padding for item in items],
            masks=[item.mask for item in items],
            sam_embeddings=torch.stack([item.sam_embedding for item in items]) if with_sam else None,
            sam_sizes=torch.stack([item.sam_size for item in items]) if with_sam else None,
            names=[item.name for item in items],
        )
    }
