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
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from visionloom.config import (
    ConfigError,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ShareOfOne,
)
from visionloom.engine.checkpoint import (
    DamagedCheckpoint,
    capture_rng,
    checkpoint_step,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_weights,
    write_text_atomic,
)
from visionloom.engine.interrupt import DeferredInterrupt, TrainingInterrupted
from visionloom.engine.run import best_weights, say
from visionloom.engine.trackers import Tracker, make_trackers, purge_after
from visionloom.progress import PLAIN_LINES_PER_PHASE, clock, is_terminal
from visionloom.threads import ThreadGovernor

logger = logging.getLogger("visionloom")


@dataclass
class ParamGroup:
    """A learning-rate rule for the parameters whose name matches `pattern` (`re.search` on the
    name `model.named_parameters()` gives, e.g. `image_encoder.model.vision_model...bias`).

    Rules apply in order and each sets only what it names, so a later rule overrides an earlier
    one on the fields it sets: IRRA's "biases at 2x without decay, then the new heads at 5x" gives
    a new head's bias 5x without decay, as IRRA's `build_optimizer` does.
    """

    pattern: str
    lr_factor: PositiveFloat | None = None  # x train.lr
    weight_decay: NonNegativeFloat | None = None  # replaces train.weight_decay

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(f"pattern {self.pattern!r} is not a regular expression ({error})") from None


@dataclass
class TrainConfig:
    # How long: `steps` optimizer steps, or `epochs` passes over the training batches (give one,
    # the other null). The warm-up likewise: `warmup_steps` or `warmup_epochs`.
    steps: PositiveInt | None = 500
    epochs: PositiveInt | None = None
    batch_size: PositiveInt = 32  # per process and micro-batch
    optimizer: Literal["adamw", "adam"] = "adamw"  # adam: decay added to the gradient (L2), as IRRA's
    lr: PositiveFloat = 1e-3
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8  # IRRA's Adam uses 1e-3
    weight_decay: NonNegativeFloat = 0.01
    # Without rules, biases, norms and other 1-d parameters take no weight decay (as CLIP trains);
    # with rules, every parameter takes train.weight_decay unless a rule says otherwise.
    param_groups: list[ParamGroup] = field(default_factory=list)
    warmup_steps: NonNegativeInt | None = 50
    warmup_epochs: NonNegativeFloat | None = None
    # A warm restart at this share of the run's steps, R = floor(share x steps): the cosine first
    # decays to 0 at step R as if the run ended there, and from R on the rate is the schedule over
    # the whole run's (so it jumps back up). One run then equals an R-step run continued with
    # --resume and the longer train.steps. null: one cosine.
    restart_at: ShareOfOne | None = None
    # The warm-up rises linearly from this fraction of each group's lr (IRRA: 0.1) to all of it.
    warmup_start: Fraction = 0.0
    grad_clip: NonNegativeFloat = 1.0  # max gradient norm; 0 = off
    grad_accum: PositiveInt = 1
    # auto: bf16 on a GPU that has it, else fp32
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    eval_every: NonNegativeInt = 0  # validate every N steps; 0 = only at the end
    # Which weights the run keeps in RUN/best and evaluates at the end: the validation's best
    # (`best`), or the last step's (`last`: validation still runs and is logged, but does not choose;
    # for a validation split too small to choose well).
    select: Literal["best", "last"] = "best"
    # With select=best: also evaluate the last step's weights when validation chose earlier ones, as
    # summary["last"] (what selection changed on test; costs one more evaluation).
    evaluate_last: bool = False
    num_workers: NonNegativeInt = 0
    seed: int = 0
    # Where the curves go besides RUN/train_log.csv: tensorboard, wandb, mlflow, or a list ([] for none).
    log_with: list[Tracker] | Tracker = "tensorboard"

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(
                f"give one of train.steps ({self.steps}) and train.epochs ({self.epochs}); set the other to null"
            )
        if (self.warmup_steps is None) == (self.warmup_epochs is None):
            raise ValueError(
                f"give one of train.warmup_steps ({self.warmup_steps}) and train.warmup_epochs "
                f"({self.warmup_epochs}); set the other to null"
            )
        # A dict from YAML or a caller becomes a ParamGroup here, so its pattern is checked too.
        self.param_groups = [
            rule if isinstance(rule, ParamGroup) else ParamGroup(**rule) for rule in self.param_groups
        ]

    def steps_per_epoch(self, batches_per_epoch: int) -> int:
        """Optimizer steps in an epoch of `batches_per_epoch` micro-batches."""
        return max(1, batches_per_epoch // self.grad_accum)

    def schedule(self, batches_per_epoch: int) -> tuple[int, int]:
        """(optimizer steps, warm-up steps) for an epoch of `batches_per_epoch` micro-batches."""
        steps_per_epoch = self.steps_per_epoch(batches_per_epoch)
        total = self.steps if self.steps is not None else self.epochs * steps_per_epoch
        warmup = (
            self.warmup_steps
            if self.warmup_steps is not None
            else round(self.warmup_epochs * steps_per_epoch)
        )
        return total, warmup

    def restart_step(self, total_steps: int) -> int | None:
        """The optimizer step of the warm restart in a run of `total_steps`, or None for none."""
        if self.restart_at is None:
            return None
        step = math.floor(self.restart_at * total_steps)
        return step if 0 < step < total_steps else None


def resolve_precision(precision: str) -> str:
    """accelerate's mixed_precision for train.precision; fp16 without a GPU is refused (accelerate
    would train in float32 while the run's config said fp16)."""
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError(
            "train.precision=fp16: half-precision training needs a CUDA GPU and none is available; "
            "use auto, no or bf16"
        )
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(config: TrainConfig, run_dir: Path | None = None) -> Accelerator:
    """The Accelerator for `config`, logging to `config.log_with`'s trackers under `run_dir`;
    without a GPU, processes started by `accelerate launch --multi_gpu` (accelerate's torchrun
    launcher) train together on CPU over gloo."""
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_precision(config.precision),
        gradient_accumulation_steps=config.grad_accum,
        log_with=(make_trackers(config.log_with, run_dir) if run_dir is not None else None) or None,
    )


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    warmup_start: float = 0.0,
    restart_step: int | None = None,
):
    """Each group's lr times: a linear warm-up from `warmup_start`, then a cosine to 0 at `total_steps`.

    Step s < W takes start + (1 - start) (s + 1) / W, so with start 0 no step is spent at lr 0.
    With `restart_step` R, steps s < R follow this schedule as if the run ended at R, and steps from
    R on follow it over `total_steps` (what resuming a finished R-step run with more steps does).
    """

    def factor(step: int) -> float:
        end = restart_step if restart_step is not None and step < restart_step else total_steps
        if step < warmup_steps:
            return warmup_start + (1.0 - warmup_start) * (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, end - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters in groups of equal (lr factor, weight decay), in a fixed order.

    Without `config.param_groups`: one group that decays and one of 1-d parameters that does not.
    With rules: each parameter starts at (1, train.weight_decay) and every rule whose pattern
    matches its name sets what it names. A rule that matches nothing is an error (a typo would
    otherwise train everything at the base lr). Each group carries its `name` and `lr_factor`.
    """
    settings: dict[tuple[float, float], list[tuple[str, torch.nn.Parameter]]] = {}
    used = [False] * len(config.param_groups)
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        factor, decay = 1.0, config.weight_decay
        if not config.param_groups and parameter.ndim < 2:
            decay = 0.0
        for index, rule in enumerate(config.param_groups):
            if re.search(rule.pattern, name):
                used[index] = True
                factor = rule.lr_factor if rule.lr_factor is not None else factor
                decay = rule.weight_decay if rule.weight_decay is not None else decay
        settings.setdefault((factor, decay), []).append((name, parameter))
    unused = [rule.pattern for rule, hit in zip(config.param_groups, used, strict=True) if not hit]
    if unused:
        raise ValueError(
            f"train.param_groups: pattern(s) {', '.join(map(repr, unused))} match no trainable parameter "
            f"of {type(model).__name__}; its names look like {next((n for n, _ in model.named_parameters()), '')!r}"
        )
    return [
        {
            "name": f"lr x{factor:g}, decay {decay:g}",
            "params": [parameter for _, parameter in members],
            "lr": config.lr * factor,
            "lr_factor": factor,
            "weight_decay": decay,
        }
        # In the order of the first parameter of each (the model's order): the groups of a resumed
        # run line up with the saved optimizer state.
        for (factor, decay), members in settings.items()
    ]


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled decay) or Adam (decay added to the gradient, as IRRA trains) over
    `parameter_groups`."""
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(parameter_groups(model, config), lr=config.lr, betas=config.betas, eps=config.eps)


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
        self.accelerator = accelerator or make_accelerator(config, self.run_dir)
        if self.accelerator.device.type == "cpu":
            # Subnormal floats (below ~1e-38 in float32) take a slow path in x86 arithmetic. A model
            # that grows confident produces them (softmax tails, their gradients), and a scene-VLM
            # pretraining on a CPU went from 0.34 s to 6-12 s a step once its warm-up loss neared 0.
            # Flushed to zero they cost nothing; no figure a run reports is that small.
            torch.set_flush_denormal(True)
        self.loader = loader  # its batch_sampler has set_epoch(epoch, start)
        self.batches_per_epoch = len(loader.batch_sampler)
        if self.batches_per_epoch < config.grad_accum:
            raise ValueError(
                f"an epoch has {self.batches_per_epoch} batches, fewer than grad_accum={config.grad_accum}"
            )
        # train.steps, or train.epochs in steps of this loader (the warm-up likewise).
        self.total_steps, self.warmup_steps = config.schedule(self.batches_per_epoch)
        # The step of the warm restart (None: one cosine); a restart at step 0 or at the end is none.
        self.restart_step = config.restart_step(self.total_steps)
        optimizer = make_optimizer(model, config)
        # The scheduler is stepped here once per optimizer step, not through accelerate, which
        # would step it once per process.
        self.scheduler = warmup_cosine(
            optimizer, self.warmup_steps, self.total_steps, config.warmup_start, self.restart_step
        )
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

    def _length(self) -> str:
        """How the run's length was given, in words."""
        per_epoch = self.config.steps_per_epoch(self.batches_per_epoch)
        restart = "" if self.restart_step is None else f", warm restart at step {self.restart_step}"
        if self.config.epochs is not None:
            return (
                f"{self.config.epochs} epoch(s) of {per_epoch} steps, warm-up {self.warmup_steps} steps"
                + restart
            )
        return f"{self.total_steps / per_epoch:.3g} epoch(s) of {per_epoch} steps" + restart

    def _ends_at(self) -> str:
        if self.config.epochs is not None:
            return f"train.epochs={self.config.epochs} ({self.total_steps} steps)"
        return f"train.steps={self.total_steps}"

    def _base_lr(self) -> float:
        """train.lr times the schedule now (each group's lr is this times its lr_factor)."""
        return self.scheduler.get_last_lr()[0] / self.optimizer.param_groups[0]["lr_factor"]

    def _validation_due(self, step: int) -> bool:
        return bool(self.config.eval_every and step % self.config.eval_every == 0) or step == self.total_steps

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
            if best is None or value > best[self.select_key] or self.config.select == "last":
                best = {"step": step, **metrics}
                weights = best_weights(self.run_dir)
                weights.parent.mkdir(parents=True, exist_ok=True)
                temporary = weights.with_name(f".{weights.name}.tmp")
                try:
                    save_weights(self.accelerator.unwrap_model(self.model), temporary)
                    temporary.replace(weights)
                except OSError:  # a full disk: the previous best stays, no partial file
                    temporary.unlink(missing_ok=True)
                    raise
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
        trackers = list(self.accelerator.log_with)
        if start_step > 0:
            purge_after(trackers, start_step)
        # The train settings go to the trackers that keep a run's configuration (W&B, MLflow).
        self.accelerator.trackers = []  # a second fit on the same accelerator starts them afresh
        self.accelerator.init_trackers("visionloom")
        settings = {key: str(value) for key, value in asdict(self.config).items()}
        for tracker in self.accelerator.trackers:
            if tracker.name != "tensorboard":
                tracker.store_init_configuration(settings)
        return log_file, bool(trackers)

    def _write_csv(self, log_file: Path) -> None:
        if not self._csv_rows:
            return
        fields = list(dict.fromkeys(key for row in self._csv_rows for key in row))
        temporary = log_file.with_name(".train_log.csv.tmp")
        try:
            with open(temporary, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(self._csv_rows)
            temporary.replace(log_file)
        except OSError:
            temporary.unlink(missing_ok=True)  # the previous log stays as it was
            raise

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
            if self._tracking:
                self.accelerator.log({f"val/{key}": value for key, value in metrics.items()}, step=step)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> TrainResult:
        config = self.config
        state = self._restore() if resume else LoopState()
        log_file, self._tracking = self._open_logs(state.step)
        self._threads = ThreadGovernor()
        self.model.train()
        started = self._started = time.perf_counter()
        self._seconds = lambda: state.seconds_before + time.perf_counter() - started
        self._window = [0, time.perf_counter()]  # samples since the last log line, and when it began
        progress = self._progress_bar(state.step)
        self._first_step = state.step
        self._next_line = state.step * PLAIN_LINES_PER_PHASE // self.total_steps + 1
        self._say(
            f"train: {'resumed at' if state.step else 'from'} step {state.step} of {self.total_steps} "
            f"({self._length()}), batch "
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
                    if state.step == self.total_steps:
                        break
        except KeyboardInterrupt:
            stop = self._interrupted(state, self._seconds())
            self._say(stop.message)
            raise stop from None
        finally:
            failing = sys.exc_info()[1] is not None
            try:
                if log_file is not None:
                    self._write_csv(log_file)
                if self._tracking:
                    # Each tracker finished, not `end_training`, which would also end the process
                    # group that the final evaluation still uses.
                    for tracker in self.accelerator.trackers:
                        tracker.finish()
            except OSError:
                if not failing:  # else the error already on its way (a full disk) says it all
                    raise
        best = f"; selected step {state.best['step']}" if state.best else ""
        self._say(f"train: done, step {state.step} of {self.total_steps} in {clock(self._seconds())}{best}")
        return TrainResult(state.step, self._seconds(), state.best, self.run_dir)

    def _restore(self) -> LoopState:
        """The loop state of the newest complete checkpoint that loads, with the weights, optimizer
        and RNG. A damaged newest checkpoint is named, and the one before it is taken instead."""
        candidates = complete_checkpoints(self.checkpoints)
        if not candidates:
            raise FileNotFoundError(
                f"--resume: {self.checkpoints} holds no complete checkpoint (the run stopped before its "
                f"first one, every {self.config.checkpoint_every} steps); start it again with --overwrite"
            )
        if checkpoint_step(candidates[0]) > self.total_steps:
            raise ValueError(
                f"--resume: the run is at step {checkpoint_step(candidates[0])} ({candidates[0]}); "
                f"{self._ends_at()} would end it before that. Give at least "
                f"{checkpoint_step(candidates[0])} steps."
            )
        damaged: list[str] = []
        for checkpoint in candidates:
            try:
                record, rng = load_checkpoint(
                    checkpoint, self.model, self.optimizer, self.scheduler, self.accelerator
                )
                missing = {"epoch", "batch_in_epoch", "best", "seconds"} - set(record)
                if missing:
                    raise DamagedCheckpoint(f"{checkpoint / 'state.json'} lacks {', '.join(sorted(missing))}")
                break
            except DamagedCheckpoint as damage:
                damaged.append(str(damage))
                logger.warning("%s; trying the checkpoint before it", damage)
        else:
            raise DamagedCheckpoint(
                f"--resume: no checkpoint in {self.checkpoints} can be read: {'; '.join(damaged)}. "
                f"Start the run again with --overwrite"
            )
        if damaged:
            self._say(f"resuming from {checkpoint}: the newer checkpoint is damaged ({damaged[-1]})")
        # The scheduler's factor is rebuilt from this config, so a run extended with a larger
        # train.steps follows the cosine of the new length from here on: at the resume step the
        # learning rate is what the longer schedule gives there, and it reaches 0 at the new end.
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
        if state.step >= self.total_steps:
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
        at_end = step == self.total_steps
        before = len(self._threads.changes)
        threads = self._threads.update()  # follows the machine's load (visionloom.threads)
        if len(self._threads.changes) > before:
            self._say(
                f"threads: {threads} at step {step} (other processes busy on "
                f"{self._threads.busy_elsewhere:.1f} of {self._threads.cpus} CPUs)"
            )
        if step % config.log_every == 0 or at_end:
            samples, since = self._window
            throughput = samples / max(1e-9, time.perf_counter() - since)
            self._window = [0, time.perf_counter()]
            shown = self._log_step(step, epoch, losses, total, throughput, self._seconds(), log_file)
            progress.update(self._task, status=f"loss {shown:.3f}  {throughput:.0f} samples/s")
            if step * PLAIN_LINES_PER_PHASE >= self._next_line * self.total_steps or at_end:
                self._next_line = step * PLAIN_LINES_PER_PHASE // self.total_steps + 1
                self._say_step(step, shown, throughput)
        progress.update(self._task, completed=step)
        if self._validation_due(step):
            self._validate(state)
        if step % config.checkpoint_every == 0 or at_end:
            self._save(state, self._seconds())
            if log_file is not None:
                self._write_csv(log_file)

    def _say_step(self, step: int, loss: float, throughput: float) -> None:
        elapsed = self._seconds()
        # The rate of this process only: a resumed run's earlier processes may have run elsewhere.
        running = time.perf_counter() - self._started
        eta = running / max(1, step - self._first_step) * (self.total_steps - step)
        self._say(
            f"step {step}/{self.total_steps} ({100 * step // self.total_steps}%) | loss {loss:.4f} | lr "
            f"{self._base_lr():.2e} | {throughput:.1f} samples/s | elapsed {clock(elapsed)} | "
            f"ETA {clock(eta)}"
        )

    def _validate(self, state: LoopState) -> None:
        state.validation_pending = True  # until it finishes: what Ctrl-C during it records
        state.best = self._select(state.step, state.best)
        state.validation_pending = False

    def _progress_bar(self, step: int) -> Progress:
        progress = Progress(
            TextColumn("train", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            disable=not self.progress or self.plain_lines,
        )
        self._task = progress.add_task("train", total=self.total_steps, completed=step, status="")
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
            "lr": self._base_lr(),
            "loss": round(total.item(), 6),
            **{key: round(value.item(), 6) for key, value in losses.items()},
            "samples_per_s": round(throughput, 2),
            "seconds": round(seconds, 2),
        }
        self._csv_rows.append(row)
        if self._tracking:
            self.accelerator.log(
                {f"train/{key}": row[key] for key in ("loss", *losses, "lr", "samples_per_s")}, step=step
            )
        return float(total.detach())
