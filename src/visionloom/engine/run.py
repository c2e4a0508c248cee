"""A run directory's rules: whose it is, what it was trained with, and that nothing overwrites it.

    RUN/.lock          held (flock) by the process writing the run; names its PID
    RUN/config.yaml    the resolved config; `--resume` refuses another, naming the keys that differ
    RUN/data.json      the data set's fingerprint; `--resume` refuses another data set
    RUN/best/          the weights selected on the validation split (written by the trainer)
    RUN/summary.json   the run, its selection and every evaluation split's metrics (`finish_run`)

A directory that already holds files is refused unless the run is resumed or `--overwrite` is
given, so a finished run is never replaced by accident. The lock is an advisory `flock` on an open
file: the kernel releases it when its process dies however it dies, so a lock is never stale, and a
second writer (a `--resume` started while a killed launcher's workers still run) is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from visionloom import config as config_io
from visionloom.engine.checkpoint import (
    DamagedCheckpoint,
    checkpoint_step,
    latest_checkpoint,
    load_weights,
    read_state,
)
from visionloom.progress import is_terminal
from visionloom.results import write_results

LOCK = ".lock"
T = TypeVar("T")


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked: in use, already holding a run, or another run's."""


class RunLock:
    """An exclusive lock on a run directory, held while this process writes to it."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.handle = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lifetime of the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryError(
                f"{self.path.parent} is being written by {holder}; wait for it to finish or stop it "
                f"(two writers would interleave checkpoints)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


def holds_a_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir())


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run in a directory that already holds one, unless asked (every process)."""
    if resume and overwrite:
        raise RunDirectoryError("--resume continues a run and --overwrite replaces it: choose one")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} exists and is not a directory")
    if resume:
        if not holds_a_run(run_dir):
            raise RunDirectoryError(f"--resume: {run_dir} holds no run to continue")
        return
    if holds_a_run(run_dir) and not overwrite:
        held = ", ".join(sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)[:5])
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({held}); pass --resume to continue it or --overwrite to "
            f"replace it"
        )


def refuse_to_replace(directory: Path, what: str, *, overwrite: bool) -> None:
    """Refuse to write `what` into a `directory` that already holds files, unless `overwrite`: a
    data set, a checkpoint or a tokenizer someone has is never replaced without being asked."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunDirectoryError(f"{directory} exists and is not a directory; give a folder for {what}")
    if overwrite or not directory.is_dir():
        return
    held = sorted(p.name for p in directory.iterdir())
    if held:
        raise RunDirectoryError(
            f"{directory} already holds {', '.join(held[:5])}{' ...' if len(held) > 5 else ''}; writing "
            f"{what} there would replace what it has. Choose a new folder, or pass --overwrite"
        )


def fingerprint(files: Iterable[Path], sized: Iterable[Path] = (), named: Iterable[str] = ()) -> str:
    """sha256 of the contents of `files` (annotations), of the names and byte sizes of `sized`
    (images: reading every one would cost minutes; a changed image set changes sizes or names) and
    of `named`, identities computed elsewhere (a VQ tokenizer's hash)."""
    digest = hashlib.sha256()
    for name in named:
        digest.update(name.encode())
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    for path in sized:
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def record_data(run_dir: Path, data_root: Path, data_fingerprint: str) -> None:
    """Write RUN/data.json (a resumed run checks it first: `check_same_data`)."""
    (run_dir / "data.json").write_text(
        json.dumps({"root": str(data_root.resolve()), "fingerprint": data_fingerprint}, indent=1)
    )


def check_same_data(run_dir: Path, data_root: Path, data_fingerprint: str) -> None:
    """On resume, refuse a data set (or VQ tokenizer) other than the one the run started on."""
    record = run_dir / "data.json"
    if not record.is_file():
        return
    before = config_io.read_json(record, RunDirectoryError)
    if before.get("fingerprint") != data_fingerprint:
        raise RunDirectoryError(
            f"--resume with another data set: {run_dir} was trained on {before.get('root')} (fingerprint "
            f"{before.get('fingerprint')}), {data_root.resolve()} has fingerprint {data_fingerprint} "
            f"(annotations, images and any VQ tokenizer and codes); resume on the same data"
        )


def check_resume_length(run_dir: Path, train: Any) -> None:
    """Refuse, before anything is written, a --resume whose train.steps (or train.epochs) would end
    the run before the step its newest checkpoint reached."""
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        return
    step = checkpoint_step(checkpoint)
    if train.steps is not None and train.steps < step:
        raise RunDirectoryError(
            f"--resume: the run is at step {step} ({checkpoint}); train.steps={train.steps} would end it "
            f"before that. Give at least {step} steps."
        )
    if train.epochs is not None:
        try:
            state = read_state(checkpoint)
        except DamagedCheckpoint:
            return  # the trainer names it and resumes from the checkpoint before, checking that one
        needed = state.get("epoch", 0) + (1 if state.get("batch_in_epoch") else 0)
        if train.epochs < needed:
            raise RunDirectoryError(
                f"--resume: the run is in epoch {needed} at step {step} ({checkpoint}); "
                f"train.epochs={train.epochs} would end it before that. Give at least {needed} epochs."
            )


class Run:
    """A locked run directory. Nothing in it is touched until `begin`, which the caller reaches
    only once everything the run needs (data, config, model) has been read and checked: a run that
    cannot start leaves the directory as it was, and `--overwrite` never deletes a finished run for
    one that fails on bad data."""

    def __init__(self, path: Path, *, resume: bool, overwrite: bool, main: bool):
        self.path, self.resume, self.overwrite, self.main = path, resume, overwrite, main
        self.begun = False

    def begin(
        self,
        config: Any = None,
        *,
        config_dir: Path | None = None,
        data_root: Path | None = None,
        data_fingerprint: str | None = None,
    ) -> None:
        """On the main process (the one that writes, so no other reads a file while it is
        rewritten): check what a resume may change (config keys, length, data), then replace the
        old run when overwriting, and write RUN/config.yaml and RUN/data.json.
        `config_dir`: where config.yaml, data.json and checkpoints live (default the run directory)."""
        run_dir = config_dir or self.path
        if self.main:
            if self.resume and config is not None:
                config_io.check_resumed_config(run_dir, config)
                check_resume_length(run_dir, config.train)
            if self.resume and data_fingerprint is not None:
                check_same_data(run_dir, data_root, data_fingerprint)
            if self.overwrite and not self.begun:
                _empty(self.path)
            if config is not None:
                config_io.save_run_config(run_dir, config)
            if data_fingerprint is not None:
                record_data(run_dir, data_root, data_fingerprint)
        self.begun = True


def _empty(run_dir: Path) -> None:
    for path in run_dir.iterdir():
        if path.name != LOCK:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def refuse_data_inside(run_dir: Path, data_root: Path, *, overwrite: bool) -> None:
    """--overwrite empties the run directory: refuse it when the data set lies inside."""
    if overwrite and Path(data_root).resolve().is_relative_to(Path(run_dir).resolve()):
        raise RunDirectoryError(
            f"--overwrite would empty {run_dir}, which holds the data set {data_root}; keep the data "
            f"outside the run directory or choose another --out"
        )


@contextmanager
def open_run(
    run_dir: Path,
    *,
    resume: bool,
    overwrite: bool,
    main: bool = True,
    data_root: Path | None = None,
) -> Iterator[Run]:
    """The run directory for the length of a run: checked on every process (`check_run_dir`),
    locked by the main one, released when the run ends however it ends. The old run an
    `overwrite` replaces is deleted by `Run.begin`, after the new run's data has been read."""
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if data_root is not None:
        refuse_data_inside(run_dir, data_root, overwrite=overwrite)
    created = not run_dir.exists()
    lock = RunLock(run_dir).acquire() if main else None
    run = Run(run_dir, resume=resume, overwrite=overwrite, main=main)
    try:
        yield run
    finally:
        if lock is not None:
            lock.release()
            if created and not run.begun:  # refused before it began: leave no folder behind
                lock.path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # something else was written there after all
                    run_dir.rmdir()


def best_weights(run_dir: Path) -> Path:
    """The weights the trainer selected on the validation split."""
    return run_dir / "best" / "model.safetensors"


def read_run_config(cls: type[T], run_dir: Path, command: str) -> T:
    """RUN/config.yaml as `cls`, checked like any config; a clear error when `run_dir` is no run."""
    config_file = Path(run_dir) / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; expected a `visionloom {command}` run directory")
    return config_io.from_dict(cls, config_io.read_yaml(config_file) or {}, str(config_file))


def say(run_dir: Path, line: str, echo: bool | None = None) -> None:
    """A progress line: appended to RUN/train.log, and printed when `echo` (by default, when stdout
    is not a terminal: there a rich bar or table shows the same on its own)."""
    with open(run_dir / "train.log", "a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    if echo if echo is not None else not is_terminal():
        print(line, flush=True)


def _evaluate_last(run_dir: Path, model: torch.nn.Module, result: Any, evaluate, config: Any) -> dict | None:
    """With `train.evaluate_last`, the last step's weights evaluated like the selected ones when
    validation chose an earlier step: {"step", split: metrics}. Evaluated before the selected
    weights, so what an evaluation writes beside its metrics is the selected weights'."""
    train = getattr(config, "train", None)
    if not getattr(train, "evaluate_last", False) or not result.best or result.best["step"] == result.step:
        return None
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None or checkpoint_step(checkpoint) != result.step:
        return None
    load_weights(model, checkpoint / "model.safetensors")
    model.eval()
    say(run_dir, f"evaluating the last step's weights (step {result.step}) beside the selected ones")
    return {"step": result.step, **evaluate(model)}


def finish_run(
    run_dir: Path,
    model: torch.nn.Module,
    result: Any,
    evaluate: Callable[[torch.nn.Module], dict[str, dict[str, float]]],
    description: dict[str, Any],
    config: Any = None,
) -> dict[str, Any]:
    """The end of every run (main process): the weights selected on val loaded into `model`, each
    evaluation split evaluated once with them, RUN/test_metrics.json (metrics per split),
    RUN/summary.json (the run, what was selected, and each split's metrics) and RUN/results.json
    (the summary with its provenance, `visionloom.results`) written."""
    weights = best_weights(run_dir)
    if not weights.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no selected weights in best/ (did training finish a validation?)"
        )
    last = _evaluate_last(run_dir, model, result, evaluate, config)
    load_weights(model, weights)
    model.eval()
    selected = f" (selected at step {result.best['step']})" if result.best else ""
    say(run_dir, f"evaluating the selected weights{selected}")
    metrics = evaluate(model)
    for split, values in metrics.items():
        say(run_dir, f"{split}: " + ", ".join(f"{key} {value:.4g}" for key, value in values.items()))
    summary = {
        **description,
        "steps": result.step,
        "train_seconds": round(result.seconds, 1),
        "selected": result.best,
        "evaluated": list(metrics),
        **metrics,
    }
    if last is not None:
        summary["last"] = last
    (run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=1))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    seed = getattr(getattr(config, "train", None), "seed", None)
    write_results(
        run_dir / "results.json", "run", summary, seeds=None if seed is None else [seed], config=config
    )
    return summary


def train_or_continue(
    run_dir: Path,
    config: Any,
    train: Callable[..., dict],
    finished: Path,
    *,
    also_finished: tuple[Path, ...] = (),
    filled_keys: tuple[str, ...] = (),
    replaces: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    """Run `train(resume=..., overwrite=...)` for `config` into `run_dir`, continuing what an
    interrupted run left there; what every comparison and the demo run each (config, seed) through.

    A run whose `finished` report (and `also_finished` files) exist and whose RUN/config.yaml holds
    the same settings (`filled_keys`: those training fills in itself) is read back: the report's
    JSON. One with a checkpoint resumes; one stopped before its first checkpoint starts over,
    replacing `replaces` (the run directory by default)."""
    saved = run_dir / "config.yaml"
    if all(path.is_file() for path in (finished, *also_finished, saved)):
        changed = [
            key
            for key, _, _ in config_io.differing_keys(
                config_io.saved_config(saved, config), config_io.to_dict(config)
            )
            if key not in filled_keys
        ]
        if not changed:
            say(f"{run_dir}: finished in an earlier run ({finished})")
            return json.loads(finished.read_text())
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is not None:
        say(f"{run_dir}: continuing from {checkpoint}")
        return train(resume=True, overwrite=False)
    return train(resume=False, overwrite=(replaces or run_dir).exists())
