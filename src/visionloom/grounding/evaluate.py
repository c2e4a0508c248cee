"""`visionloom ground eval`: cIoU, mIoU and P@0.5 of the coarse and the SAM-refined masks, per split."""

from __future__ import annotations

from pathlib import Path

import torch

from visionloom.data.refcoco import RefSample, evaluation_splits
from visionloom.engine import run as engine_run
from visionloom.engine.checkpoint import load_weights
from visionloom.engine.run import best_weights
from visionloom.grounding import build
from visionloom.grounding.build import build_model, build_refiner, read_samples, read_splits, split_features
from visionloom.grounding.config import GroundingConfig
from visionloom.grounding.features import SampleFeatures, collate
from visionloom.grounding.metrics import MaskMetrics
from visionloom.grounding.model import Grounder


def evaluate(model: Grounder, features: list[SampleFeatures], batch_size: int = 64) -> dict[str, float]:
    """cIoU, mIoU and P@0.5 of the coarse masks, and of the refined ones when SAM is used (percent)."""
    return evaluate_outcomes(model, features, batch_size)[0]


@torch.no_grad()
def evaluate_outcomes(
    model: Grounder, features: list[SampleFeatures], batch_size: int = 64
) -> tuple[dict[str, float], dict]:
    """(`evaluate`'s metrics, each sample's outcome): {"samples": names, "coarse": {"intersection",
    "union"}, ["refined": ...]}, in pixels, in the order of `features`."""
    model.eval()
    coarse, refined = MaskMetrics(), MaskMetrics()
    for start in range(0, len(features), batch_size):
        batch = collate(features[start : start + batch_size])["features"]
        prediction = model.predict(batch)
        for i, target in enumerate(batch.masks):
            coarse.update(prediction.coarse[i] > 0, target)
            if prediction.refined is not None:
                refined.update(prediction.refined[i] > 0, target)
    metrics = {f"coarse_{key}": value for key, value in coarse.result().items()}
    outcomes = {"samples": [f.name for f in features], "coarse": coarse.outcomes()}
    if refined.ious:
        metrics.update({f"refined_{key}": value for key, value in refined.result().items()})
        outcomes["refined"] = refined.outcomes()
    return metrics, outcomes


def read_run_config(run_dir: str | Path) -> GroundingConfig:
    return engine_run.read_run_config(GroundingConfig, Path(run_dir), "ground train")


def evaluate_run(run_dir: str | Path, data_root: str | Path, split: str | None = None) -> dict[str, dict]:
    """Metrics of a trained run on `split`, or on every evaluation split of the data set (the VLM
    is loaded once)."""
    config = read_run_config(run_dir)
    if split is None:
        splits = read_splits(config, data_root, required=())
        names = evaluation_splits(splits)
    else:
        splits, names = {split: read_samples(config, data_root, split)}, [split]
    adapter, refiner = build.load_vlm(config), build_refiner(config)
    features = {
        name: split_features(config, adapter, refiner, Path(data_root), name, True, splits[name])
        for name in names
    }
    model, _, _ = load_trained(run_dir, features[names[0]])
    return {name: evaluate(model, features[name]) for name in names}


def load_trained(
    run_dir: str | Path,
    features: list[SampleFeatures] | None = None,
    *,
    samples: list[RefSample] | None = None,
    data_root: str | Path | None = None,
    split: str = "test",
):
    """(Grounder with the selected weights, config, features).

    Features are computed when not given: for `samples`, else for `split` of `data_root`.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    weights = best_weights(run_dir)
    if not weights.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no selected weights in best/ (did training finish a validation?)"
        )
    refiner = build_refiner(config)
    if features is None:
        features = split_features(config, build.load_vlm(config), refiner, data_root, split, True, samples)
    model = build_model(config, features, refiner)
    load_weights(model, weights)
    return model.eval(), config, features
