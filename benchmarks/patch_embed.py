"""Qwen2.5-VL scene-VLM training step with its patch embedding as PyTorch's Conv3d against the
same weights computed as one matrix product (`backbones.patch_embed`, what the layer uses).

The shipped recipe's model (`configs/vlm/qwen2.5-vl`, batch 32) on synthetic scenes drawn here:
median of --repeats forward + backward + AdamW steps on the same batch, after warm-up, the two
settings alternated in rounds so that a slow spell of the machine falls on both. Prints
Conv3d / product: above 1 means the product is faster.

    .venv/bin/python benchmarks/patch_embed.py
"""

from __future__ import annotations  # noqa: I001 (write_results first)

import argparse
import statistics
import tempfile
from pathlib import Path

from visionloom.results import write_results  # first: it reads the load average at start

import torch
from torch import nn

from visionloom.backbones.patch_embed import Conv3dAsMatmul
from visionloom.data.scenes import SceneCells, read_scene_folder, read_scene_splits
from visionloom.data.synth_scenes import generate
from visionloom.vlm.answers import AnswerCollate
from visionloom.vlm.build import build_vlm
from visionloom.vlm.config import load_config
from visionloom.vlm.model import AnswerModel


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed steps per setting and round (default: 5)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds of both settings (default: 4)")
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()
    from train_step import median_step_seconds  # a sibling script: its folder is on sys.path

    config = load_config("qwen2.5-vl")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "scenes"
        generate(root, scenes=100, seed=0, progress=False)
        folder = read_scene_folder(root)
        train = read_scene_splits(folder, ("train",))["train"]
        adapter = build_vlm(config)
        adapter.model.train()
        cells = SceneCells(folder) if config.cell_weight else None
        batch = AnswerCollate(adapter, cells)(train[: config.train.batch_size])
    model = AnswerModel(adapter, config.cell_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    patch_conv = adapter.vision_tower.patch_embed.proj
    assert type(patch_conv) is Conv3dAsMatmul, "the layer no longer switches Qwen's patch embedding"

    seconds: dict[str, list[float]] = {"conv3d": [], "product": []}
    for _ in range(args.rounds):
        for setting, module_class in (("conv3d", nn.Conv3d), ("product", Conv3dAsMatmul)):
            patch_conv.__class__ = module_class
            seconds[setting].append(median_step_seconds(model, batch, optimizer, args.repeats, warmup=1))
    conv3d, product = (statistics.median(seconds[s]) for s in ("conv3d", "product"))
    print(
        f"qwen2.5-vl step (batch {config.train.batch_size}): Conv3d {conv3d * 1000:.0f} ms, "
        f"product {product * 1000:.0f} ms: Conv3d / product = {conv3d / product:.2f}"
    )
    if args.results:
        figures = {
            "batch": config.train.batch_size,
            "conv3d_ms": conv3d * 1000,
            "product_ms": product * 1000,
            "ratio": conv3d / product,
        }
        write_results(args.results, "patch_embed", figures, seeds=[config.seed])


if __name__ == "__main__":
    main()
