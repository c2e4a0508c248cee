"""Training curves through accelerate's trackers (`train.log_with`): TensorBoard by default, W&B
(offline here) or both, each inside the run directory; a tracker whose package is missing is one
line naming it."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import small_config
from visionloom.cli import app
from visionloom.config import ConfigError
from visionloom.engine.trackers import tracker_names
from visionloom.retrieval.train import train_retrieval


def _csv_losses(run_dir) -> dict[int, float]:
    with open(run_dir / "train_log.csv") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle) if row["loss"]}


def wandb_records(path: Path):
    """The records of an offline W&B run file (`run-ID.wandb`), parsed.

    Written here because wandb ships no Python reader for its offline files: the file is a
    7-byte header (":W&B", magic, version) then LevelDB's log format (32 KiB blocks; each chunk a
    4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last), every record one
    `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", path
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):
            pending += chunk


def wandb_history(run_file: Path) -> list[dict]:
    rows = []
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def test_wandb_offline_and_tensorboard_together_log_the_training_curve(pedes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    config = small_config("phase1", "train.log_with=[tensorboard, wandb]")
    train_retrieval(config, pedes_root, run, progress=False)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1, list((run / "wandb").iterdir())
    history = wandb_history(offline[0])
    logged = {row["_step"]: row["train/loss"] for row in history if "train/loss" in row}
    assert logged == pytest.approx(_csv_losses(run))
    assert len(logged) == config.train.steps
    assert any("val/mAP" in row for row in history)  # validation goes the same way
    settings = [r for r in wandb_records(offline[0]) if r.WhichOneof("record_type") == "config"]
    assert {"batch_size", "log_with"} <= {item.key for item in settings[0].config.update}


def test_no_tracker_writes_only_the_csv_log(pedes_root, tmp_path):
    run = tmp_path / "run"
    train_retrieval(small_config("phase1", "train.log_with=[]"), pedes_root, run, progress=False)
    assert (run / "train_log.csv").is_file()
    assert not (run / "tensorboard").exists() and not (run / "wandb").exists()


def test_a_tracker_whose_package_is_missing_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match=r"train.log_with=mlflow: the mlflow package is not installed; pip install"
    ):
        tracker_names(["tensorboard", "mlflow"])
    assert tracker_names("wandb") == ["wandb"]


def test_a_tracker_that_does_not_exist_is_refused_with_the_choices(pedes_root, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "retrieval",
            "train",
            "phase1",
            "--data",
            str(pedes_root),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "train.log_with=comet",
        ],
    )
    assert result.exit_code == 2
    assert (
        "train.log_with" in result.output and "'tensorboard'" in result.output and "'wandb'" in result.output
    )
