"""`visionloom ground train|eval|show`: data -> frozen features -> Grounder -> engine.trainer -> metrics.

RUN/config.yaml        the resolved config
RUN/checkpoints/       atomic training checkpoints (resume from `latest`)
RUN/best/              the weights selected on the validation split, and why
RUN/train_log.csv      per-step losses; RUN/tensorboard/ the same
RUN/test_metrics.json  every evaluation split the data set has (val, test or testA and testB),
                       evaluated once with the selected weights
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader

from visionloom import config as config_io
from visionloom.backbones import load
from visionloom.config import PositiveInt
from visionloom.data.pedes import DatasetFormatError
from visionloom.data.refcoco import RefSample, evaluation_splits, find_refs_file, read_refcoco
from visionloom.data.scenes import DEFAULT_PROMPT
from visionloom.engine import run as engine_run
from visionloom.engine.checkpoint import load_weights
from visionloom.engine.run import best_weights, check_run_dir, fingerprint, finish_run, open_run, record_data
from visionloom.engine.samplers import RandomBatches
from visionloom.engine.trainer import TrainConfig, Trainer, make_accelerator
from visionloom.grounding.features import FeatureSet, SampleFeatures, collate, compute_features
from visionloom.grounding.head import HeadConfig
from visionloom.grounding.metrics import MaskMetrics
from visionloom.grounding.model import Grounder
from visionloom.grounding.sam import SamRefiner, SamSettings, load_sam


@dataclass
class GroundingConfig:
    name: str = "grounding"
    vlm: str | None = None  # a local checkpoint directory, or a preset name (random weights: the control)
    vlm_seed: int = 0  # weights of a preset
    prompt: str = DEFAULT_PROMPT
    merge: Literal["mean", "max"] = "mean"  # how attention is merged over the expression's tokens
    text_layers: PositiveInt = 2  # hidden states of the last K layers, weighted, go to text_proj
    image_dir: str | None = None  # images, when not DATA/images (COCO's train2014 for RefCOCO)
    split_by: str | None = (
        None  # which refs(<split_by>) file: unc (RefCOCO, RefCOCO+), umd or google (RefCOCOg)
    )
    allow_pickle: bool = False  # read a pickled refs(...).p; unpickling runs code, so only for trusted files
    head: HeadConfig = field(default_factory=HeadConfig)
    sam: SamSettings = field(default_factory=SamSettings)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=400, batch_size=32, lr=1e-3, warmup_steps=30)
    )


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> GroundingConfig:
    return config_io.load(GroundingConfig, config_io.find_config("grounding", name_or_path), overrides)


def require_vlm(config: GroundingConfig) -> None:
    if config.vlm is None:
        raise ValueError(
            "no VLM: give --vlm DIR (a checkpoint from `visionloom vlm pretrain` or a real one), "
            "or a preset name for the random-weight control"
        )


def load_vlm(config: GroundingConfig):
    require_vlm(config)
    adapter = load(config.vlm, seed=config.vlm_seed) if not Path(config.vlm).is_dir() else load(config.vlm)
    adapter.model.eval().requires_grad_(False)
    return adapter


def build_refiner(config: GroundingConfig) -> SamRefiner | None:
    return SamRefiner(*load_sam(config.sam), config.sam) if config.sam.enabled else None


def read_samples(config: GroundingConfig, data_root: str | Path, split: str | None) -> list[RefSample]:
    return read_refcoco(
        data_root,
        split,
        image_dir=config.image_dir,
        split_by=config.split_by,
        allow_pickle=config.allow_pickle,
    )


def read_splits(
    config: GroundingConfig, data_root: str | Path, required: tuple[str, ...] = ("train", "val")
) -> dict[str, list[RefSample]]:
    """Every split's samples, read once before any work; the `required` splits must be there."""
    by_split: dict[str, list[RefSample]] = {}
    for sample in read_samples(config, data_root, None):
        by_split.setdefault(sample.split, []).append(sample)
    missing = [split for split in required if split not in by_split]
    if missing:
        raise DatasetFormatError(
            f"{data_root}: no {' or '.join(repr(m) for m in missing)} split (training needs train, and val "
            f"to select on); splits present: {sorted(by_split)}"
        )
    return by_split


def split_features(
    config, adapter, refiner, data_root: Path, split: str, progress: bool, samples=None
) -> list[SampleFeatures]:
    """Frozen features of `samples`, else of the split's samples, with the config's prompt and merge."""
    if samples is None:
        samples = read_samples(config, data_root, split)
    return compute_features(
        adapter,
        samples,
        refiner,
        prompt=config.prompt,
        merge=config.merge,
        text_layers=config.text_layers,
        description=split,
        progress=progress,
    )


def build_model(config: GroundingConfig, features: list[SampleFeatures], refiner) -> Grounder:
    channels, text_width = features[0].attention.shape[0], features[0].hidden.shape[-1]
    torch.manual_seed(config.train.seed)
    return Grounder(channels, config.text_layers, text_width, config.head, refiner)


@torch.no_grad()
def evaluate(model: Grounder, features: list[SampleFeatures], batch_size: int = 64) -> dict[str, float]:
    """cIoU, mIoU and P@0.5 of the coarse masks, and of the refined ones when SAM is used (percent)."""
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
    if refined.ious:
        metrics.update({f"refined_{key}": value for key, value in refined.result().items()})
    return metrics


def select_key(config: GroundingConfig) -> str:
    return "refined_cIoU" if config.sam.enabled else "coarse_cIoU"


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
    accelerator = make_accelerator(config.train)
    with open_run(run_dir, resume=resume, overwrite=overwrite, main=accelerator.is_main_process):
        adapter = load_vlm(config)
        refiner = build_refiner(config)
        train_features = split_features(
            config, adapter, refiner, data_root, "train", progress, splits["train"]
        )
        val_features = split_features(config, adapter, refiner, data_root, "val", progress, splits["val"])
        model = build_model(config, train_features, refiner)
        if accelerator.is_main_process:
            config_io.save_run_config(run_dir, config, resume)
            refs_file = find_refs_file(data_root, config.split_by)
            record_data(
                run_dir, data_root, fingerprint([refs_file, data_root / "instances.json"]), resume=resume
            )
        sampler = RandomBatches(
            len(train_features),
            config.train.batch_size,
            config.train.seed,
            accelerator.process_index,
            accelerator.num_processes,
        )
        loader = DataLoader(FeatureSet(train_features), batch_sampler=sampler, collate_fn=collate)
        trainer = Trainer(
            model,
            loader,
            config.train,
            run_dir,
            accelerator=accelerator,
            validate=lambda m: evaluate(m, val_features),
            select_key=select_key(config),
            progress=progress,
        )
        result = trainer.fit(resume=resume)
        description = {
            "name": config.name,
            "vlm": config.vlm,
            "image_dir": str(splits["train"][0].image_path.parent),
        }
        summary = {**description, "steps": result.step, "selected": result.best}

        def evaluate_splits(best: Grounder) -> dict[str, dict[str, float]]:
            """Every split the data set has, as F-LMM reports them (val is the one selection used)."""
            metrics = {}
            for split in evaluation_splits(splits):
                features = val_features
                if split != "val":
                    features = split_features(
                        config, adapter, refiner, data_root, split, progress, splits[split]
                    )
                metrics[split] = evaluate(best, features)
            return metrics

        if accelerator.is_main_process:
            summary = finish_run(run_dir, model, result, evaluate_splits, description)
        accelerator.wait_for_everyone()
        return summary


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
    adapter, refiner = load_vlm(config), build_refiner(config)
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
        features = split_features(config, load_vlm(config), refiner, data_root, split, True, samples)
    model = build_model(config, features, refiner)
    load_weights(model, weights)
    return model.eval(), config, features
