"""Where training curves go besides RUN/train_log.csv: accelerate's trackers, chosen by
`train.log_with` (tensorboard, wandb, mlflow; one name or a list, [] for none).

Each tracker writes inside the run directory: TensorBoard to RUN/tensorboard, W&B to RUN/wandb
(offline with `WANDB_MODE=offline`, synced later with `wandb sync`), MLflow to RUN/mlruns. Only the
main process logs (accelerate's rule). A resumed run's TensorBoard events after its checkpoint
are purged, as the CSV log drops its rows.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker

from visionloom.config import ConfigError

Tracker = Literal["tensorboard", "wandb", "mlflow"]

# The package each tracker needs, and how to get it.
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def tracker_names(log_with: str | list[str]) -> list[str]:
    """`train.log_with` as a list of names, each installed; ConfigError naming a missing package."""
    names = [log_with] if isinstance(log_with, str) else list(dict.fromkeys(log_with))
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(
                f"train.log_with={name}: the {PACKAGES[name]} package is not installed; "
                f"pip install 'visionloom[trackers]' (or pip install {PACKAGES[name]}), or log elsewhere"
            )
    return names


def make_trackers(log_with: str | list[str], run_dir: Path) -> list[GeneralTracker]:
    """The trackers `log_with` names, writing under `run_dir`; started by `Accelerator.init_trackers`."""
    trackers: list[GeneralTracker] = []
    for name in tracker_names(log_with):
        if name == "tensorboard":
            trackers.append(TensorBoardTracker("tensorboard", run_dir))
        elif name == "wandb":
            trackers.append(WandBTracker("visionloom", dir=str(run_dir), name=run_dir.name))
        else:
            trackers.append(
                MLflowTracker("visionloom", logging_dir=str(run_dir / "mlruns"), run_name=run_dir.name)
            )
    return trackers


def purge_after(trackers: list[GeneralTracker], step: int) -> None:
    """A resumed run: TensorBoard drops the events a killed run wrote after `step`."""
    for tracker in trackers:
        if isinstance(tracker, TensorBoardTracker):
            tracker.init_kwargs["purge_step"] = step + 1
