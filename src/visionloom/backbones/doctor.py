"""`visionloom doctor`: what the image-token layer does for a checkpoint, and proof that it holds.

Loads a checkpoint (or preset), reports its image-token facts, then runs the whole path on a
generated image: build inputs, one vision-tower pass (counted), the model's own inserted
embeddings compared bit for bit with the layer's, and a language-model forward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.registry import load


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DoctorReport:
    model: str
    facts: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(check.ok for check in self.checks)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "ok": self.ok,
            "facts": self.facts,
            "checks": [asdict(c) for c in self.checks],
            "error": self.error,
        }


def test_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A deterministic image with structure (gradient, shapes), so features differ across tokens."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 256], -1)
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(4, max(5, width // 3))), y0 + int(rng.integers(4, max(5, height // 3)))
        draw.ellipse([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


class CallCounter:
    """Counts forward calls of a module (the vision tower) while active."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.calls, self._handle = module, 0, None

    def __enter__(self) -> CallCounter:
        self._handle = self.module.register_forward_hook(self._count)
        return self

    def _count(self, *_args) -> None:
        self.calls += 1

    def __exit__(self, *_exc) -> None:
        self._handle.remove()


@torch.no_grad()
def run_doctor(
    model: str,
    image_size: tuple[int, int] | None = None,
    native: bool = False,
    *,
    dtype: str | None = None,
    device: str | None = None,
) -> DoctorReport:
    """Load MODEL and run the whole image-token path once; every failure becomes `report.error`.

    A bad checkpoint is the doctor's subject, not a crash: whatever loading or running raises is
    reported with its cause (the layer's own errors name the file and setting at fault).
    """
    report = DoctorReport(model=model)
    try:
        adapter = load(model, native_resolution=native, dtype=dtype, device=device)
    except Exception as error:  # noqa: BLE001 - the doctor reports every failure as a named cause
        report.error = describe_failure(error, "loading the checkpoint")
        return report
    report.facts.update(adapter.describe())
    report.facts["weights"] = f"{adapter.model.dtype} on {adapter.model.device}"
    height, width = image_size or adapter.configured_image_size()
    try:
        geometry = adapter.geometry(height, width)
        report.facts["tokens per image"] = (
            f"{geometry.num_tokens} at {height}x{width} (grid {geometry.token_grid[0]}x{geometry.token_grid[1]})"
        )
        if geometry.drops_anything:
            report.facts["dropped by floor"] = geometry.drop_report()
        _run_path(adapter, test_image(height, width), report)
    except Exception as error:  # noqa: BLE001
        report.error = describe_failure(error, "running the image-token path")
    return report


def describe_failure(error: Exception, during: str) -> str:
    """One line: the layer's own errors as they are, anything else with its type and what was running."""
    if isinstance(error, (ImageTokenMismatch, FileNotFoundError)):
        return f"{type(error).__name__}: {error}"
    return f"{type(error).__name__} while {during}: {error}"


def _run_path(adapter: ImageTokenAdapter, image: Image.Image, report: DoctorReport) -> None:
    device = adapter.model.device
    inputs = adapter.build_inputs([image], ["<image> describe the image"]).to(device)
    placeholders = int(inputs.image_token_mask.sum())
    expected = inputs.geometries[0].num_tokens
    report.checks.append(
        Check(
            "placeholders",
            placeholders == expected,
            f"{placeholders} image tokens in input_ids, {expected} derived from the config",
        )
    )
    with CallCounter(adapter.vision_tower) as counter:
        tokens = adapter.encode_images(inputs)
        adapter.forward(inputs, tokens)
    report.checks.append(
        Check(
            "one tower pass",
            counter.calls == 1,
            f"vision tower ran {counter.calls} time(s) for encode_images + forward",
        )
    )
    magnitude = float(tokens.embeds.float().abs().sum())  # in float32: a half-precision sum overflows
    report.checks.append(Check("embeddings non-zero", magnitude > 0, f"|embeds| sum {magnitude:.3g}"))
    stock_size = adapter.configured_image_size()
    if adapter.native_resolution and (image.height, image.width) != stock_size:
        # The model's own path reshapes to its configured square and cannot run here; check the
        # dynamic path against it at the configured size instead.
        reference_inputs = adapter.build_inputs([test_image(*stock_size)], ["<image> describe the image"]).to(
            device
        )
        ours = adapter.encode_images(reference_inputs).embeds
        theirs = adapter.model_inserted_embeds(reference_inputs)
        where = f"at the configured {stock_size[0]}x{stock_size[1]} (the stock path cannot run at {image.height}x{image.width})"
    else:
        ours, theirs, where = tokens.embeds, adapter.model_inserted_embeds(inputs), "on this image"
    same = ours.shape == theirs.shape and torch.equal(ours, theirs)
    report.checks.append(
        Check(
            "matches the model's own insertion",
            same,
            f"layer embeddings {tuple(ours.shape)} vs model's {tuple(theirs.shape)}, "
            f"{'bit-identical' if same else 'DIFFERENT'} {where}",
        )
    )
