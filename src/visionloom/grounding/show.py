"""`visionloom ground show`: one PNG per sample, image | attention | coarse | refined, with the expression."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from visionloom.data.refcoco import RefSample
from visionloom.grounding.features import SampleFeatures, collate, read_sample_image
from visionloom.grounding.model import Grounder

TILE = 224


def _overlay(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    tint = np.array(colour, dtype=np.float32)
    base[mask] = 0.45 * base[mask] + 0.55 * tint
    return Image.fromarray(base.astype(np.uint8))


def _outline(image: Image.Image, mask: np.ndarray, colour=(255, 0, 255), width: int = 2) -> Image.Image:
    """The mask's boundary drawn on the image: visible whatever the object's colour."""
    inside = torch.from_numpy(mask).float()[None, None]
    eroded = -torch.nn.functional.max_pool2d(-inside, 2 * width + 1, stride=1, padding=width)
    boundary = (inside - eroded)[0, 0].bool().numpy()
    base = np.asarray(image.convert("RGB")).copy()
    base[boundary] = colour
    return Image.fromarray(base)


def _heat(attention: torch.Tensor, feature: SampleFeatures, image: Image.Image) -> Image.Image:
    """Mean attention over layers and heads, on the image (cropped from the padded square)."""
    grid = attention.mean(0)  # [h, w]
    grid = (grid - grid.min()) / (grid.max() - grid.min()).clamp_min(1e-8)
    on_image = feature.padding.crop(grid[None])[0].numpy()  # [H, W]
    heat = np.stack([on_image * 255, on_image * 80, (1 - on_image) * 120], axis=-1)
    return Image.blend(image.convert("RGB"), Image.fromarray(heat.astype(np.uint8)), 0.6)


@torch.no_grad()
def show(model: Grounder, samples: list[RefSample], features: list[SampleFeatures], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=13)
    prediction = model.predict(collate(features)["features"])
    paths = []
    for index, (sample, feature) in enumerate(zip(samples, features, strict=True)):
        image = read_sample_image(sample)
        truth = sample.mask()
        panels = [
            ("image + ground truth (outline)", _outline(image, truth)),
            ("attention (mean of layers x heads)", _heat(feature.attention, feature, image)),
            ("coarse mask (head)", _overlay(image, (prediction.coarse[index] > 0).numpy(), (230, 40, 40))),
        ]
        if prediction.refined is not None:
            panels.append(
                ("refined (SAM)", _overlay(image, (prediction.refined[index] > 0).numpy(), (40, 80, 230)))
            )
        header = 40
        canvas = Image.new("RGB", (len(panels) * (TILE + 8) + 8, TILE + header + 24), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text(
            (8, 6),
            "\n".join(textwrap.wrap(f"expression: {sample.expression}", 90)[:2]),
            fill="black",
            font=font,
        )
        for column, (title, panel) in enumerate(panels):
            x = 8 + column * (TILE + 8)
            panel.thumbnail((TILE, TILE))
            canvas.paste(panel, (x, header))
            draw.text((x, header + TILE + 4), title, fill="black", font=font)
        path = out / f"{index:02d}_ref{sample.ref_id}_{sample.sent_id}.png"
        canvas.save(path)
        paths.append(path)
    return paths
