"""Scene-VLM pretraining speed with the batches prepared beside the step (`train.num_workers=1`)
against in the step (0), for each family.

Each setting pretrains the shipped recipe (batch 32) for --steps steps on synthetic scenes drawn
here, and reads the trainer's own samples per second from RUN/train_log.csv, leaving out the first
logged interval (start-up: worker processes, first allocations). Prints, per family, the ratio
workers / in the step: above 1 means faster with the worker.

    .venv/bin/python benchmarks/vlm_step.py
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

from visionloom.data.synth_scenes import generate
from visionloom.results import write_results
from visionloom.vlm.config import FAMILY_PRESETS, load_config
from visionloom.vlm.train import pretrain


def samples_per_second(root: Path, out: Path, family: str, workers: int, steps: int) -> float:
    config = load_config(
        family,
        [
            f"train.steps={steps}",
            f"train.num_workers={workers}",
            "train.log_every=10",
            f"train.checkpoint_every={steps}",
            "train.eval_every=0",
            "train.log_with=[]",
        ],
    )
    pretrain(root, out, config, progress=False)
    with open(out / "run" / "train_log.csv") as handle:
        rates = [float(row["samples_per_s"]) for row in csv.DictReader(handle) if row["samples_per_s"]]
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="steps per setting (default: 60)")
    parser.add_argument("--scenes", type=int, default=100, help="synthetic scenes (default: 100)")
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()

    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "scenes"
        generate(root, scenes=args.scenes, seed=0, progress=False)
        for family in FAMILY_PRESETS:
            rates = {
                workers: samples_per_second(
                    root, Path(scratch) / f"{family}-{workers}", family, workers, args.steps
                )
                for workers in (0, 1)
            }
            figures[family] = {
                "in_step_samples_per_s": rates[0],
                "worker_samples_per_s": rates[1],
                "ratio": rates[1] / rates[0],
            }
            print(
                f"{family}: {rates[0]:.1f} samples/s with the batch prepared in the step, "
                f"{rates[1]:.1f} with one worker: {rates[1] / rates[0]:.2f}x"
            )
    if args.results:
        write_results(args.results, "vlm_step", {"steps": args.steps, "families": figures}, seeds=[0])


if __name__ == "__main__":
    main()
