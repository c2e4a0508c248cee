"""Training-step time of phase 3, phase 4 with the offline VQ cache, and phase 4 encoding VQ online.

All three at the tiny configs' size (384x128 images, batch 32), on the same synthetic batch, after
warm-up; median of --repeats forward + backward + AdamW steps. Prints the ratios to phase 3, and
online / cached: what the offline cache saves.

The VQ tokenizer decides that last figure, so by default it has a real tokenizer's size: the
configuration of taming-transformers' VQGAN f16 (configs/vqgan_imagenet_f16_16384.yaml: ch 128,
ch_mult [1, 1, 2, 2, 4], num_res_blocks 2, z_channels = embed_dim = 256, n_embed 16384) in
diffusers' `VQModel` with random weights (diffusers' blocks: attention in the middle block only),
encoding 384x128 images to a 24x8 grid. `--vq tiny` uses the demo's own small fitted tokenizer.

    .venv/bin/python benchmarks/train_step.py
    .venv/bin/python benchmarks/train_step.py --vq tiny
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from visionloom.data.pedes import read_pedes
from visionloom.data.synth_pedes import generate
from visionloom.results import write_results
from visionloom.retrieval.build import create_model
from visionloom.retrieval.config import VQFitConfig, load_config
from visionloom.retrieval.datasets import Collate, TrainPairs
from visionloom.retrieval.train import prepare_vq
from visionloom.retrieval.vq import SIZE_FILE, build_cache, fit_vq


def taming_f16_vq(out: Path) -> None:
    """A VQGAN f16 of taming-transformers' size in diffusers' VQModel, random weights, saved to `out`."""
    import json

    from diffusers import VQModel

    torch.manual_seed(0)
    model = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 5,
        up_block_types=("UpDecoderBlock2D",) * 5,
        block_out_channels=(128, 128, 256, 256, 512),  # ch 128 x ch_mult [1, 1, 2, 2, 4]
        layers_per_block=2,
        latent_channels=256,
        num_vq_embeddings=16384,
        vq_embed_dim=256,
        norm_num_groups=32,
        sample_size=256,
    )
    model.save_pretrained(out)
    (out / SIZE_FILE).write_text(json.dumps({"image_size": [384, 128]}))


def step_time(config, root: Path, repeats: int, batch_size: int) -> float:
    split = read_pedes(root)["train"]
    vq, cache = prepare_vq(config, root) if config.model.architecture == "phase4" else (None, None)
    model = create_model(config, split.num_identities, vq)
    pairs = TrainPairs(split, model.input_spec, cache)
    batch = Collate(model.input_spec.tokenizer.pad_token_id)([pairs[(i, i)] for i in range(batch_size)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return median_step_seconds(model, batch, optimizer, repeats, warmup=2)


def median_step_seconds(model, batch: dict, optimizer, repeats: int, warmup: int) -> float:
    """The median time of `repeats` forward + backward + optimizer steps on `batch`, after `warmup`
    untimed ones (allocations, lazy initialisation). `benchmarks/recipe_step.py` times with it too."""
    times = []
    for index in range(warmup + repeats):
        started = time.perf_counter()
        loss = sum(value for key, value in model(batch).items() if "loss" in key)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per setting (default: 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step (default: 32)")
    parser.add_argument(
        "--vq",
        choices=("taming-f16", "tiny"),
        default="taming-f16",
        help="the VQ tokenizer: taming's VQGAN f16 size, or the demo's tiny one (default: taming-f16)",
    )
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        generate(root, 20, seed=0, progress=False)
        split = read_pedes(root)["train"]
        if args.vq == "tiny":
            fit_vq(
                split, root / "vq", VQFitConfig(steps=2), progress=False
            )  # speed does not depend on quality
        else:
            taming_f16_vq(root / "vq")
        build_cache(root, split, root / "vq", progress=False)
        phase3 = step_time(load_config("phase3"), root, args.repeats, args.batch_size)
        cached = step_time(load_config("phase4"), root, args.repeats, args.batch_size)
        online = step_time(load_config("phase4", ["vq.online=true"]), root, args.repeats, args.batch_size)
    print(
        f"VQ {args.vq}; step time (batch {args.batch_size}, 384x128): phase3 {phase3 * 1000:.0f} ms, phase4 cached "
        f"{cached * 1000:.0f} ms, phase4 online {online * 1000:.0f} ms"
    )
    print(
        f"phase4 cached / phase3 = {cached / phase3:.2f}; phase4 online / phase3 = {online / phase3:.2f}; "
        f"online / cached = {online / cached:.2f}"
    )
    if args.results:
        figures = {
            "vq": args.vq,
            "batch": args.batch_size,
            "phase3_ms": phase3 * 1000,
            "phase4_cached_ms": cached * 1000,
            "phase4_online_ms": online * 1000,
            "ratio": online / cached,
        }
        write_results(args.results, "train_step", figures, seeds=[0])


if __name__ == "__main__":
    main()
