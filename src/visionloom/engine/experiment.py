"""The one experiment runner every training uses: run directory, lock, fingerprint, resume,
validation, the final evaluation and the summary.

    run_experiment(config, data_root, run_dir, prepare, resume=..., overwrite=...)

A system supplies only what is its own, in `prepare(accelerator) -> Setup`: it reads and checks
its data, builds its model and loader, and says how to validate, which metric selects, what the
data's fingerprint is and how the selected weights are evaluated at the end. The runner calls it
inside the locked run directory and writes nothing before it returns, so a run whose data or
model cannot be built leaves the directory as it was (`Run.begin`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from visionloom.engine.run import finish_run, open_run
from visionloom.engine.trainer import Trainer, make_accelerator


@dataclass
class Setup:
    """What a system builds before anything of its run is written."""

    model: torch.nn.Module
    loader: Any  # a DataLoader whose batch_sampler has set_epoch(epoch, start)
    validate: Callable[[torch.nn.Module], dict[str, float]]  # on the validation split
    select_key: str  # the validation metric that selects the weights kept in RUN/best
    data_fingerprint: str  # what --resume compares (`engine.run.fingerprint`)
    evaluate: Callable[[torch.nn.Module], dict[str, dict[str, float]]]  # the selected weights, per split
    description: dict[str, Any] = field(default_factory=dict)  # goes into RUN/summary.json
    records: dict[str, str] = field(default_factory=dict)  # RUN/<name>: text, written once the run begins


def run_experiment(
    config: Any,
    data_root: Path,
    run_dir: Path,
    prepare: Callable[[Accelerator], Setup],
    *,
    resume: bool,
    overwrite: bool,
    progress: bool = True,
    lock_dir: Path | None = None,
    after: Callable[[Setup, dict], dict] | None = None,
) -> dict:
    """Prepare, begin the run, train, select on validation, evaluate once; the run's summary.

    `config` has a `train` section (`TrainConfig`). `lock_dir`: the folder that is locked and that
    `--overwrite` replaces, when the run directory lies inside it (a pretrained checkpoint whose
    run is in CHECKPOINT/run). `after(setup, summary)`: what the main process does with the
    finished run while it still holds the lock (save a checkpoint, write a report); its result
    is returned.
    """
    accelerator = make_accelerator(config.train, run_dir)
    main = accelerator.is_main_process
    with open_run(
        lock_dir or run_dir, resume=resume, overwrite=overwrite, main=main, data_root=data_root
    ) as run:
        setup = prepare(accelerator)
        run.begin(config, config_dir=run_dir, data_root=data_root, data_fingerprint=setup.data_fingerprint)
        if main:
            for name, text in setup.records.items():
                (run_dir / name).write_text(text)
        trainer = Trainer(
            setup.model,
            setup.loader,
            config.train,
            run_dir,
            accelerator=accelerator,
            validate=setup.validate,
            select_key=setup.select_key,
            progress=progress,
        )
        result = trainer.fit(resume=resume)
        summary = {**setup.description, "steps": result.step, "selected": result.best}
        if main:
            summary = finish_run(run_dir, setup.model, result, setup.evaluate, setup.description, config)
            if after is not None:
                summary = after(setup, summary)
        accelerator.wait_for_everyone()
        return summary
