"""`visionloom retrieval train`: data -> model (from config) -> engine.trainer -> metrics, IRRA's chain.

    RUN/config.yaml        the resolved config (phase 4's codebook size and grid filled in)
    RUN/run.json           data root, identities, notes on the protocol
    RUN/checkpoints/       atomic training checkpoints (resume from `latest`)
    RUN/best/              the weights selected on the validation split, and why
    RUN/train_log.csv      per-step losses, learning rate, throughput; RUN/tensorboard/ the same
    RUN/test_metrics.json  the test split, evaluated once with the selected weights
    RUN/test_queries.safetensors  each test query's first-hit rank and AP (paired comparisons)

Checkpoint selection uses the validation split only; the test split is evaluated once, at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from visionloom.data.check import require_usable
from visionloom.engine import run as engine_run
from visionloom.engine.checkpoint import latest_checkpoint, load_weights
from visionloom.engine.experiment import Setup, run_experiment
from visionloom.engine.run import (
    best_weights,
    fingerprint,
    read_run_config,
)
from visionloom.progress import track
from visionloom.retrieval import evaluate
from visionloom.retrieval.build import create_model
from visionloom.retrieval.config import RetrievalConfig
from visionloom.retrieval.datasets import TrainPairs, make_sampler, train_loader
from visionloom.retrieval.metrics import QueryOutcomes
from visionloom.retrieval.model import DualEncoder


def needs_vq(config: RetrievalConfig) -> bool:
    return config.model.architecture == "phase4" and config.loss.enable_gen


def vq_directory(config: RetrievalConfig, data_root: Path) -> Path:
    return Path(config.vq.path) if config.vq.path else Path(data_root) / "vq"


def ensure_tokenizers(
    configs: list[RetrievalConfig],
    data_root: Path,
    *,
    fit_overrides: dict | None = None,
    progress: bool = True,
    say=print,
) -> None:
    """Every VQ tokenizer `configs` need, with its code cache, before any of them trains: DATA/vq
    is fitted from the configs' own `vq.fit` (with `fit_overrides`) when it is missing; a
    `vq.path` must already hold one. Configs that would fit different tokenizers into the one
    DATA/vq are refused. What `demo` and `retrieval compare` prepare their runs with."""
    from visionloom.data.pedes import read_pedes
    from visionloom.retrieval.vq import ensure_vq

    needed = {}  # tokenizer directory -> the fit that makes it (None: a given vq.path)
    for config in configs:
        if not needs_vq(config):
            continue
        fit = dataclasses.replace(config.vq.fit, **(fit_overrides or {})) if config.vq.path is None else None
        directory = vq_directory(config, data_root)
        if needed.setdefault(directory, fit) != fit:
            raise ValueError(
                f"the configs fit different VQ tokenizers into {directory} (their vq.fit differs); "
                "compare them on separate data roots, or give them one vq.path"
            )
    if needed:
        split = read_pedes(data_root)["train"]
        for directory, fit in needed.items():
            ensure_vq(data_root, split, fit, directory, progress=progress, say=say)


def _tokenizer_digest(config: RetrievalConfig, data_root: Path, cache) -> str:
    """The VQ tokenizer's hash: the open code cache's, or computed when codes are encoded online."""
    from visionloom.retrieval.vq import tokenizer_hash

    return cache.digest if cache is not None else tokenizer_hash(vq_directory(config, data_root))


def prepare_vq(config: RetrievalConfig, data_root: Path):
    """Load the tokenizer, fill the model's codebook size and grid, open the cache (or refuse)."""
    from visionloom.retrieval.vq import VQCache, code_grid, load_vq

    directory = vq_directory(config, data_root)
    model = load_vq(directory)
    config.model.codebook_size = model.codebook_size
    config.model.code_grid = code_grid(model)
    cache = None if config.vq.online else VQCache.open(data_root, directory)
    return model, cache


def train_retrieval(
    config: RetrievalConfig,
    data_root: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate_test: bool = True,
) -> dict:
    """Train, select on val, evaluate test once; returns the run summary (also in RUN/summary.json).

    A run directory that already holds a run is refused unless `resume` or `overwrite` is given.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data_root, run_dir = Path(data_root), Path(run_dir)
    if config.data.augment == "irra" and config.vq.online and needs_vq(config):
        raise ValueError(
            "data.augment=irra with vq.online=true: the online VQ targets would be codes of the cropped, "
            "erased view while the offline cache holds the clean image's; use the offline cache with irra"
        )

    def prepare(accelerator) -> Setup:
        # The whole data set is checked before any work: the same rules as `data check`, one code path.
        dataset = require_usable(
            data_root, progress=(lambda it: track(it, description="checking data")) if progress else None
        )
        train_split, val_split = dataset["train"], dataset["val"]
        vq_model, cache = prepare_vq(config, data_root) if needs_vq(config) else (None, None)
        model = create_model(config, train_split.num_identities, vq_model)
        images = [image.path for split in dataset.splits.values() for image in split.images]
        # Phase 4 learns to predict the VQ tokenizer's codes: another tokenizer is other data. Its
        # hash (the one its code cache is named by) stands for it and its codes.
        vq_identity = [f"vq {_tokenizer_digest(config, data_root, cache)}"] if vq_model else []
        train_set = TrainPairs(train_split, model.input_spec, cache, augment=config.data.augment)
        sampler = make_sampler(
            train_set,
            config.train.batch_size,
            config.data.ids_per_batch,
            config.train.seed,
            accelerator.process_index,
            accelerator.num_processes,
        )
        notes = [
            *val_split.notes,
            *model.input_spec.notes,
            "best weights selected on the validation split; the test split is evaluated once, at the end"
            if config.train.select == "best"
            else "the last step's weights kept (train.select=last); the test split is evaluated once, at the end",
        ]
        run_record = {
            "data_root": str(data_root.resolve()),
            "dataset": dataset.name,
            "num_identities": train_split.num_identities,
            "notes": notes,
        }
        return Setup(
            model=model,
            loader=train_loader(
                train_set, sampler, config.train.num_workers, pin_memory=torch.cuda.is_available()
            ),
            validate=lambda m: evaluate.evaluate_split(m, val_split),
            select_key="R1",
            data_fingerprint=fingerprint([dataset.annotation_file], images, vq_identity),
            evaluate=lambda best: (
                {"test": _evaluate_test(best, dataset["test"], run_dir)} if evaluate_test else {}
            ),
            description={"name": config.name},
            records={"run.json": json.dumps(run_record, indent=1)},
        )

    return run_experiment(
        config, data_root, run_dir, prepare, resume=resume, overwrite=overwrite, progress=progress
    )


def _evaluate_test(model: DualEncoder, split, run_dir: Path) -> dict[str, float]:
    """The test metrics; each query's own result goes to RUN/test_queries.safetensors, so two runs
    can be compared query by query (`retrieval compare`)."""
    metrics, outcomes = evaluate.evaluate_split_outcomes(model, split)
    save_outcomes(outcomes, run_dir / QUERY_OUTCOMES)
    return metrics


QUERY_OUTCOMES = "test_queries.safetensors"


def save_outcomes(outcomes: QueryOutcomes, path: Path) -> None:
    tensors = {"first_rank": outcomes.first_rank, "average_precision": outcomes.average_precision}
    if outcomes.query_pids is not None:
        tensors["query_pids"] = outcomes.query_pids
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))


def load_outcomes(run_dir: Path) -> QueryOutcomes:
    path = Path(run_dir) / QUERY_OUTCOMES
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the run was not evaluated on test by this version (run it again)"
        )
    tensors = load_file(str(path))
    return QueryOutcomes(tensors["first_rank"], tensors["average_precision"], tensors.get("query_pids"))


def train_or_continue(
    config: RetrievalConfig, data_root: Path, run_dir: Path, *, progress: bool = True, say=print
) -> dict:
    """Train `config` into `run_dir`, continuing what an interrupted run left there
    (`engine.run.train_or_continue`). What `demo` and `retrieval compare` run each configuration through."""
    return engine_run.train_or_continue(
        run_dir,
        config,
        lambda **how: train_retrieval(config, data_root, run_dir, progress=progress, **how),
        run_dir / "summary.json",
        also_finished=(run_dir / QUERY_OUTCOMES,),
        # phase 4's codebook size and grid are filled from the VQ model when training starts
        filled_keys=("model.codebook_size", "model.code_grid"),
        say=say,
    )


def find_run(path: str | Path) -> tuple[Path, Path]:
    """(run dir, weights file) for a run directory (its selected weights) or one of its checkpoints."""
    path = Path(path)
    if (path / "model.safetensors").is_file() and (path / "state.json").is_file():
        return path.parent.parent, path / "model.safetensors"
    if (path / "config.yaml").is_file():
        best = best_weights(path)
        if best.is_file():
            return path, best
        latest = latest_checkpoint(path / "checkpoints")
        if latest is not None:
            return path, latest / "model.safetensors"
    raise FileNotFoundError(
        f"{path} is neither a retrieval run directory (config.yaml + weights) nor a checkpoint"
    )


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> DualEncoder:
    """A trained model from a run directory or checkpoint, in eval mode."""
    run_dir, weights = find_run(path)
    config = read_run_config(RetrievalConfig, run_dir, "retrieval train")
    config.vq.online = False  # encoding needs no tokenizer; the generator's weights load all the same
    run = json.loads((run_dir / "run.json").read_text())
    model = create_model(config, run["num_identities"])
    load_weights(model, weights)
    return model.to(device).eval()
