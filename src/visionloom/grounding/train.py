"""`visionloom ground train`: data -> frozen features -> Grounder -> engine.trainer -> metrics.

The chain, one stage per file: data/refcoco.py (reader) -> build.py (config, VLM, SAM, features,
Grounder) -> this loop (engine.trainer) -> evaluate.py (metrics per split).


RUN/config.yaml        the resolved config
RUN/checkpoints/       atomic training checkpoints (resume from `latest`)
RUN/best/              the weights selected on the validation split, and why
RUN/train_log.csv      per-step losses; RUN/tensorboard/ the same
RUN/test_metrics.json  every evaluation split the data set has (val, test or testA and testB),
                       evaluated once with the selected weights
RUN/sample_outcomes.json  the same evaluation per expression (intersection and union in pixels):
                       what `ground compare` pairs runs by
"""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.data import DataLoader

from visionloom.data.refcoco import evaluation_splits, find_refs_file
from visionloom.engine.experiment import Setup, run_experiment
from visionloom.engine.run import check_run_dir, fingerprint
from visionloom.engine.samplers import Items, RandomBatches
from visionloom.grounding import build
from visionloom.grounding.build import (
    build_model,
    build_refiner,
    read_splits,
    require_vlm,
    select_key,
    split_features,
)
from visionloom.grounding.config import GroundingConfig
from visionloom.grounding.evaluate import evaluate, evaluate_outcomes
from visionloom.grounding.features import collate
from visionloom.grounding.model import Grounder

SAMPLE_OUTCOMES = "sample_outcomes.json"


def train_grounding(
    config: GroundingConfig,
    data_root: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train the head on frozen features, select on val, evaluate every evaluation split once.

    A run directory that already holds a run is refused unless `resume` or `overwrite` is given.
    """
    data_root, run_dir = Path(data_root), Path(run_dir)
    require_vlm(config)
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    splits = read_splits(config, data_root)  # before any work: a missing split fails now, not after training

    def prepare(accelerator) -> Setup:
        adapter = build.load_vlm(config)
        refiner = build_refiner(config)

        def features(split: str) -> list:
            return split_features(config, adapter, refiner, data_root, split, progress, splits[split])

        train_features, val_features = features("train"), features("val")
        model = build_model(config, train_features, refiner)
        sampler = RandomBatches(
            len(train_features),
            config.train.batch_size,
            config.train.seed,
            accelerator.process_index,
            accelerator.num_processes,
        )

        def evaluate_splits(best: Grounder) -> dict[str, dict[str, float]]:
            """Every split the data set has, as F-LMM reports them (val is the one selection used);
            each expression's outcome goes to RUN/sample_outcomes.json."""
            metrics, outcomes = {}, {}
            for split in evaluation_splits(splits):
                scored = val_features if split == "val" else features(split)
                metrics[split], outcomes[split] = evaluate_outcomes(best, scored)
            (run_dir / SAMPLE_OUTCOMES).write_text(json.dumps(outcomes))
            return metrics

        refs_file = find_refs_file(data_root, config.split_by)
        return Setup(
            model=model,
            loader=DataLoader(Items(train_features), batch_sampler=sampler, collate_fn=collate),
            validate=lambda m: evaluate(m, val_features),
            select_key=select_key(config),
            data_fingerprint=fingerprint([refs_file, data_root / "instances.json"]),
            evaluate=evaluate_splits,
            description={
                "name": config.name,
                "vlm": config.vlm,
                "image_dir": str(splits["train"][0].image_path.parent),
            },
        )

    return run_experiment(
        config, data_root, run_dir, prepare, resume=resume, overwrite=overwrite, progress=progress
    )
