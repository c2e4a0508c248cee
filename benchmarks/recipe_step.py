"""Memory and step time of each CUHK-PEDES recipe on this machine, at the released depth.

Each recipe (`configs/retrieval/cuhk-pedes/`) is built from random-weight checkpoints of the
released shapes at full depth (`tests/recipe_checkpoints.py` with no cut: CLIP ViT-B/16, t5-base,
SigLIP base 16/224, T5Gemma 2 270M), phase 4 with a random VQ of its `vq.fit` shape, and timed on
a synthetic batch: forward, backward and the recipe's own optimizer (IRRA's Adam and parameter
groups), with the recipe's gradient checkpointing. One process per recipe, so its peak resident
memory (ru_maxrss) is its own: the weights, the optimizer state and the step's activations.

    .venv/bin/python benchmarks/recipe_step.py                      # all six, batch 2
    .venv/bin/python benchmarks/recipe_step.py --recipe phase4 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from visionloom.results import write_results  # first: it reads the load average at start

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("baseline", "phase1", "phase2", "phase3", "phase4", "phase3-t5gemma2")


def measure(recipe: str, batch_size: int, repeats: int) -> dict:
    """Build `recipe` at full depth in this process and time `repeats` steps after one warm-up."""
    sys.path.insert(0, str(ROOT))
    import torch
    from train_step import median_step_seconds  # a sibling script: its folder is on sys.path

    from tests.recipe_checkpoints import WRITERS
    from tests.retrieval.test_recipes import CHECKPOINTS
    from visionloom.data.pedes import read_pedes
    from visionloom.data.synth_pedes import generate
    from visionloom.engine.trainer import make_optimizer
    from visionloom.retrieval.build import create_model
    from visionloom.retrieval.config import load_config
    from visionloom.retrieval.datasets import Collate, TrainPairs
    from visionloom.retrieval.train import prepare_vq
    from visionloom.retrieval.vq import SIZE_FILE, build_cache, build_vq

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        vision, text = CHECKPOINTS[recipe]
        overrides = [f"model.vision.pretrained={WRITERS[vision](root / vision, layers=None)}"]
        if text:
            overrides.append(f"model.text.pretrained={WRITERS[text](root / text, layers=None)}")
        overrides.append(f"train.batch_size={batch_size}")
        config = load_config(f"cuhk-pedes/{recipe}", overrides)
        data = root / "data"
        generate(data, 20, seed=0, progress=False)
        split = read_pedes(data)["train"]
        vq, cache = None, None
        if recipe == "phase4":  # speed does not depend on what the VQ learned: random weights
            torch.manual_seed(0)
            build_vq(config.vq.fit).save_pretrained(data / "vq")
            (data / "vq" / SIZE_FILE).write_text(json.dumps({"image_size": list(config.vq.fit.image_size)}))
            build_cache(data, split, data / "vq", progress=False)
            vq, cache = prepare_vq(config, data)
        model = create_model(config, split.num_identities, vq).train()
        pairs = TrainPairs(split, model.input_spec, cache, augment=config.data.augment)
        batch = Collate(model.input_spec.tokenizer.pad_token_id)([pairs[(i, i)] for i in range(batch_size)])
        optimizer = make_optimizer(model, config.train)
        step_seconds = median_step_seconds(model, batch, optimizer, repeats, warmup=1)
        return {
            "recipe": recipe,
            "parameters_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_s": step_seconds,
            "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "gradient_checkpointing": config.model.gradient_checkpointing,
            "threads": torch.get_num_threads(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipe", choices=RECIPES, action="append", help="a recipe (repeatable; default: all)"
    )
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up (default: 3)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure one recipe, print JSON
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch_size, args.repeats)))
        return
    print(f"CUHK-PEDES recipes at full depth, batch {args.batch_size}, median of {args.repeats} steps")
    steps, figures = {}, {}
    for recipe in args.recipe or RECIPES:
        command = [
            sys.executable,
            __file__,
            "--one",
            recipe,
            "--batch-size",
            str(args.batch_size),
            "--repeats",
            str(args.repeats),
        ]
        result = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
        steps[recipe] = result["step_s"]
        figures[recipe] = result
        print(
            f"{recipe:16s} {result['parameters_M']:7.1f} M parameters  step {result['step_s']:6.2f} s  "
            f"peak memory {result['peak_rss_GB']:5.2f} GB  (gradient checkpointing "
            f"{'on' if result['gradient_checkpointing'] else 'off'}, {result['threads']} threads)"
        )
    if "baseline" in steps and len(steps) > 1:  # the comparable figure: each step against the baseline's
        print(
            "step / baseline step: "
            + ", ".join(f"{name} {value / steps['baseline']:.2f}" for name, value in steps.items())
        )
    if args.results:
        write_results(args.results, "recipe_step", {"batch": args.batch_size, "recipes": figures}, seeds=[0])


if __name__ == "__main__":
    main()
