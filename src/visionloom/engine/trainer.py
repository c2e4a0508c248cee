"""The training loop: one for every model that returns a dict of losses.

It knows three things about a model: `model(batch)` returns a dict whose keys containing "loss"
are summed and back-propagated; its parameters; and, through a `validate` callback, one number to
select the best weights on (the validation split, never the test split).

AdamW with linear warm-up and cosine decay, gradient clipping, mixed precision where the device
has it, gradient accumulation, all through `accelerate` (so `accelerate launch` runs it on several
processes); per-step logs to CSV and TensorBoard; a rich progress bar on a terminal and plain
progress lines otherwise (both also in RUN/train.log); atomic checkpoints every
`checkpoint_every` steps and at the end, from which `resume` continues bit for bit.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from visionloom.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from visionloom.engine.checkpoint import (
    capture_rng,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_weights,
    write_text_atomic,
)
from visionloom.engine.interrupt import DeferredInterrupt, TrainingInterrupted
from visionloom.engine.run import best_weights, say
from visionloom.progress import PLAIN_LINES_PER_PHASE, clock, is_terminal


@dataclass
class TrainConfig:
    steps: PositiveInt = 500  # optimizer steps
    batch_size: PositiveInt = 32  # per process and micro-batch
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.01
    warmup_steps: NonNegativeInt = 50
    grad_clip: NonNegativeFloat = 1.0  # max gradient norm; 0 = off
    grad_accum: PositiveInt = 1
    # auto: bf16 on a GPU that has it, else fp32
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    eval_every: NonNegativeInt = 0  # validate every N steps; 0 = only at the end
    num_workers: NonNegativeInt = 0
    seed: int = 0


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The Accelerator for `config`; without a GPU, processes started by `accelerate launch
    --multi_gpu` (accelerate's torchrun launcher) train together on CPU over gloo."""
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_precision(config.precision),
        gradient_accumulation_steps=config.grad_accum,
    )


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up from 0, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and 1-d parameters (as CLIP and IRRA train)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def move(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors and anything else with `.to(device)` (such as MultimodalInputs) onto the device."""
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value.to(device)
        for key, value in batch.items()
    }


@dataclass
class LoopState:
    """Where the loop is: what a checkpoint records, and what Ctrl-C saves."""

    step: int = 0  # optimizer steps done
    position: tuple[int, int] = (0, 0)  # (epoch, batches done in it) where the next step starts
    best: dict[str, Any] | None = None  # {"step", metric: value} of the weights in RUN/best
    seconds_before: float = 0.0  # training time of the sessions before this one (resume)
    validation_pending: bool = False  # the validation due at `step` has not finished
    rng: dict[str, Any] | None = None  # the random streams where the next step starts


@dataclass
class TrainResult:
    step: int
    seconds: float
    best: dict[str, Any] | None  # {"step", metric: value} of the selected weights
    run_dir: Path


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        loader,
        config: TrainConfig,
        run_dir: Path,
        *,
        accelerator: Accelerator | None = None,
        validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        select_key: str | None = None,
        progress: bool = True,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator or make_accelerator(config)
        self.loader = loader  # its batch_sampler has set_epoch(epoch, start)
        optimizer = make_optimizer(model, config)
        # The scheduler is stepped here once per optimizer step, not through accelerate, which
        # would step it once per process.
        self.scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if validate is not None and select_key is None:
            raise ValueError(
                "a trainer that validates needs select_key: the metric that selects the best weights"
            )
        self.validate = validate
        self.select_key = select_key
        self.progress = progress and self.accelerator.is_main_process
        # Off a terminal the bar would print nothing until the end: plain lines instead.
        self.plain_lines = self.progress and not is_terminal()
        self.checkpoints = self.run_dir / "checkpoints"

    # ------------------------------------------------------------------ state
    def _save(self, state: LoopState, seconds: float) -> Path:
        """Checkpoint `state.step`: where the next step starts, and whether its validation is pending."""
        epoch, batch_in_epoch = state.position
        record = {
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "best": state.best,
            "seconds": seconds,
            "validation_pending": state.validation_pending,
        }
        return save_checkpoint(
            self.checkpoints,
            state.step,
            self.model,
            self.optimizer,
            self.scheduler,
            record,
            state.rng,
            self.accelerator,
        )

    def _validation_due(self, step: int) -> bool:
        return (
            bool(self.config.eval_every and step % self.config.eval_every == 0) or step == self.config.steps
        )

    def _select(self, step: int, best: dict | None) -> dict | None:
        """Validate; keep the weights in RUN/best when they beat the best so far (main process)."""
        if self.validate is None:
            return best
        self.model.eval()
        # Validation draws no numbers that training will see: resuming right after it, or right
        # before it (Ctrl-C came during it), continues the same random streams.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            metrics = (
                self.validate(self.accelerator.unwrap_model(self.model))
                if self.accelerator.is_main_process
                else {}
            )
        self.model.train()
        self._log_validation(step, metrics)
        if self.accelerator.is_main_process:
            if self.select_key not in metrics:
                raise KeyError(
                    f"validation gave {sorted(metrics)}, not the selection metric {self.select_key!r}"
                )
            value = metrics[self.select_key]
            if best is None or value > best[self.select_key]:
                best = {"step": step, **metrics}
                weights = best_weights(self.run_dir)
                weights.parent.mkdir(parents=True, exist_ok=True)
                temporary = weights.with_name(f".{weights.name}.tmp")
                save_weights(self.accelerator.unwrap_model(self.model), temporary)
                temporary.replace(weights)
                write_text_atomic(weights.with_name("selection.json"), json.dumps(best, indent=1))
        best = self.accelerator.gather_for_metrics([best])[0] if self.accelerator.num_processes > 1 else best
        return best

    # ------------------------------------------------------------------ logs
    def _open_logs(self, start_step: int):
        if not self.accelerator.is_main_process:
            return None, None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.run_dir / "train_log.csv"
        rows = []
        if log_file.exists() and start_step > 0:  # drop rows a killed run wrote after its last checkpoint
            with open(log_file) as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= start_step]
        self._csv_rows = rows
        tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
        except ImportError:
            pass
        return log_file, tensorboard

    def _write_csv(self, log_file: Path) -> None:
        if not self._csv_rows:
            return
        fields = list(dict.fromkeys(key for row in self._csv_rows for key in row))
        temporary = log_file.with_name(".train_log.csv.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self._csv_rows)
        temporary.replace(log_file)

    def _say(self, line: str) -> None:
        """A progress line: into RUN/train.log, and on stdout when it is not a terminal."""
        if self.accelerator.is_main_process:
            say(self.run_dir, line, echo=self.plain_lines)

    def _log_validation(self, step: int, metrics: dict) -> None:
        if self.accelerator.is_main_process and metrics:
            shown = ", ".join(f"{key} {value:.4g}" for key, value in metrics.items())
            self._say(f"validation at step {step}: {shown}")
            row = {"step": step, **{f"val_{k}": round(v, 4) for k, v in metrics.items()}}
            self._csv_rows.append(row)
            if self._tensorboard is not None:
                for key, value in metrics.items():
                    self._tensorboard.add_scalar(f"val/{key}", value, step)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> TrainResult:
        config = self.config
        state = self._restore() if resume else LoopState()
        log_file, self._tensorboard = self._open_logs(state.step)
        self.batches_per_epoch = len(self.loader.batch_sampler)
        if self.batches_per_epoch < config.grad_accum:
            raise ValueError(
                f"an epoch has {self.batches_per_epoch} batches, fewer than grad_accum={config.grad_accum}"
            )
        self.model.train()
        started = self._started = time.perf_counter()
        self._seconds = lambda: state.seconds_before + time.perf_counter() - started
        self._window = [0, time.perf_counter()]  # samples since the last log line, and when it began
        progress = self._progress_bar(state.step)
        self._first_step = state.step
        self._next_line = state.step * PLAIN_LINES_PER_PHASE // config.steps + 1
        self._say(
            f"train: {'resumed at' if state.step else 'from'} step {state.step} of {config.steps}, batch "
            f"{config.batch_size} x {self.accelerator.num_processes} process(es), run {self.run_dir}"
        )
        state.rng = capture_rng()
        interrupts = DeferredInterrupt()
        try:
            with progress, interrupts:
                if state.validation_pending:  # Ctrl-C cut it short: it runs before anything else
                    self._validate(state)
                for epoch, batches_done, batch in self._batches(state):
                    # 1. one micro-batch forward and backward; the weights change only on a synced step
                    losses, total = self._step(batch, epoch, batches_done, state, interrupts)
                    if not self.accelerator.sync_gradients:
                        continue
                    # 2. after the step: log, validate, checkpoint
                    self._after_step(state, epoch, losses, total, progress, log_file)
                    if state.step == config.steps:
                        break
        except KeyboardInterrupt:
            stop = self._interrupted(state, self._seconds())
            self._say(stop.message)
            raise stop from None
        finally:
            if log_file is not None:
                self._write_csv(log_file)
            if self._tensorboard is not None:
                self._tensorboard.close()
        best = f"; selected step {state.best['step']}" if state.best else ""
        self._say(f"train: done, step {state.step} of {config.steps} in {clock(self._seconds())}{best}")
        return TrainResult(state.step, self._seconds(), state.best, self.run_dir)

    def _restore(self) -> LoopState:
        """The loop state of the newest complete checkpoint, with the weights, optimizer and RNG."""
        checkpoint = latest_checkpoint(self.checkpoints)
        if checkpoint is None:
            raise FileNotFoundError(
                f"--resume: {self.checkpoints} holds no complete checkpoint (the run stopped before its "
                f"first one, every {self.config.checkpoint_every} steps); start it again with --overwrite"
            )
        if checkpoint_step(checkpoint) > self.config.steps:
            raise ValueError(
                f"--resume: the run is at step {checkpoint_step(checkpoint)} ({checkpoint}); train.steps="
                f"{self.config.steps} would end it before that. Give at least {checkpoint_step(checkpoint)}."
            )
        # The scheduler's factor is rebuilt from this config, so a run extended with a larger
        # train.steps follows the cosine of the new length from here on: at the resume step the
        # learning rate is what the longer schedule gives there, and it reaches 0 at the new end.
        record, rng = load_checkpoint(
            checkpoint, self.model, self.optimizer, self.scheduler, self.accelerator
        )
        # The optimizer's saved learning rate is the old schedule's; the next step takes this one's.
        step = self.scheduler.last_epoch
        for group, base_lr, factor in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base_lr * factor(step)
        restore_rng(rng)
        return LoopState(
            step=checkpoint_step(checkpoint),
            position=(record["epoch"], record["batch_in_epoch"]),
            best=record["best"],
            seconds_before=record["seconds"],
            validation_pending=record.get("validation_pending", False),
        )

    def _batches(self, state: LoopState) -> Iterator[tuple[int, int, Any]]:
        """(epoch, batches done in it, batch) from `state.position` on, epoch after epoch, until
        the last step; each epoch's order comes from the sampler's (seed, epoch)."""
        if state.step >= self.config.steps:
            return
        epoch, done = state.position
        sampler = self.loader.batch_sampler
        while True:
            sampler.set_epoch(epoch, start=done)
            for batch in self.loader:
                done += 1
                yield epoch, done, batch
            epoch, done = epoch + 1, 0

    def _step(self, batch, epoch: int, batches_done: int, state: LoopState, interrupts: DeferredInterrupt):
        """Forward, backward and (on a synced micro-batch) the optimizer step; returns the losses."""
        accelerator, config = self.accelerator, self.config
        batch = move(batch, accelerator.device)
        with accelerator.accumulate(self.model):
            outputs = self.model(batch)
            losses = {key: value for key, value in outputs.items() if "loss" in key}
            if not losses:
                raise KeyError(f"the model returned no *loss* key, only {sorted(outputs)}")
            total = sum(losses.values())
            accelerator.backward(total)
            if accelerator.sync_gradients and config.grad_clip > 0:
                accelerator.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            with interrupts.critical():  # the weights change here, all at once
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    self.scheduler.step()
                    state.step += 1
                    # A model that maintains itself between steps (the VQ fit's dead-code
                    # restarts) does it here, inside the update, so a checkpoint holds it whole.
                    maintain = getattr(accelerator.unwrap_model(self.model), "after_optimizer_step", None)
                    if maintain is not None:
                        maintain(state.step)
                    # Where the next step starts: what a checkpoint of this step records.
                    epoch_done = batches_done >= self.batches_per_epoch
                    state.position = (epoch + 1, 0) if epoch_done else (epoch, batches_done)
                    state.rng = capture_rng()
        self._window[0] += config.batch_size * accelerator.num_processes
        return losses, total

    def _after_step(self, state: LoopState, epoch: int, losses, total, progress, log_file) -> None:
        config, step = self.config, state.step
        at_end = step == config.steps
        if step % config.log_every == 0 or at_end:
            samples, since = self._window
            throughput = samples / max(1e-9, time.perf_counter() - since)
            self._window = [0, time.perf_counter()]
            shown = self._log_step(step, epoch, losses, total, throughput, self._seconds(), log_file)
            progress.update(self._task, status=f"loss {shown:.3f}  {throughput:.0f} samples/s")
            if step * PLAIN_LINES_PER_PHASE >= self._next_line * config.steps or at_end:
                self._next_line = step * PLAIN_LINES_PER_PHASE // config.steps + 1
                self._say_step(step, shown, throughput)
        progress.update(self._task, completed=step)
        if self._validation_due(step):
            self._validate(state)
        if step % config.checkpoint_every == 0 or at_end:
            self._save(state, self._seconds())
            if log_file is not None:
                self._write_csv(log_file)

    def _say_step(self, step: int, loss: float, throughput: float) -> None:
        config, elapsed = self.config, self._seconds()
        # The rate of this session only: a resumed run's earlier sessions may have run elsewhere.
        session = time.perf_counter() - self._started
        eta = session / max(1, step - self._first_step) * (config.steps - step)
        self._say(
            f"step {step}/{config.steps} ({100 * step // config.steps}%) | loss {loss:.4f} | lr "
            f"{self.scheduler.get_last_lr()[0]:.2e} | {throughput:.1f} samples/s | elapsed {clock(elapsed)} | "
            f"ETA {clock(eta)}"
        )

    def _validate(self, state: LoopState) -> None:
        state.validation_pending = True  # until it finishes: what Ctrl-C during it records
        state.best = self._select(state.step, state.best)
        state.validation_pending = False

    def _progress_bar(self, step: int) -> Progress:
        progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            disable=not self.progress or self.plain_lines,
        )
        self._task = progress.add_task("train", total=self.config.steps, completed=step, status="")
        return progress

    def _interrupted(self, state: LoopState, seconds: float) -> TrainingInterrupted:
        """Save what is consistent after Ctrl-C (one process), or say what a resume continues from."""
        step = state.step
        if step > 0 and self.accelerator.num_processes == 1:
            saved = self._save(state, seconds)
            message = f"interrupted after step {step}: saved {saved}" + (
                " (its validation was cut short and runs first on resume)" if state.validation_pending else ""
            )
            return TrainingInterrupted(step, saved, step, message)
        latest = latest_checkpoint(self.checkpoints)
        resume_from = checkpoint_step(latest) if latest is not None else None
        why = (
            "nothing was saved: several processes cannot agree on one checkpoint after Ctrl-C"
            if step > 0
            else "nothing was saved: no step had finished"
        )
        after = (
            f"--resume continues from step {resume_from} ({latest})"
            if latest
            else "there is no checkpoint to resume from"
        )
        return TrainingInterrupted(step, None, resume_from, f"interrupted at step {step}; {why}; {after}")

    def _log_step(self, step, epoch, losses, total, throughput, seconds, log_file) -> float:
        """Log the step's losses averaged over every process (each saw its own batch); returns the total."""
        accelerator = self.accelerator
        if accelerator.num_processes > 1:  # a collective: every process logs at the same steps
            losses = {
                key: accelerator.reduce(value.detach(), reduction="mean") for key, value in losses.items()
            }
            total = accelerator.reduce(total.detach(), reduction="mean")
        if log_file is None:
            return float(total.detach())
        row = {
            "step": step,
            "epoch": epoch,
            "lr": self.scheduler.get_last_lr()[0],
            "loss": round(total.item(), 6),
            **{key: round(value.item(), 6) for key, value in losses.items()},
            "samples_per_s": round(throughput, 2),
            "seconds": round(seconds, 2),
        }
        self._csv_rows.append(row)
        if self._tensorboard is not None:
            for key in ("loss", *losses, "lr", "samples_per_s"):
                self._tensorboard.add_scalar(f"train/{key}", row[key], step)
        return float(total.detach())
