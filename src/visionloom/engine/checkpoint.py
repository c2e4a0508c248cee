"""Atomic checkpoints: weights in safetensors, optimizer, scheduler, every process's RNG, the step.

    RUN/checkpoints/step_0000200/   model.safetensors  optimizer.pt  scheduler.pt  rng_0.pt ...  state.json
    RUN/checkpoints/latest          the name of the newest checkpoint, for people to read

A checkpoint is written into a hidden temporary directory and renamed into place only when every
file is on disk; `latest` is replaced by rename too. A run killed mid-write leaves a stray
temporary directory and the previous checkpoint intact. Resuming takes the newest complete
checkpoint directory (`latest_checkpoint`), not what `latest` says, so a run killed between
writing a checkpoint and updating `latest` loses nothing.

A model may name state-dict prefixes it rebuilds from their own source every time it is built
(`weights_from_elsewhere()`, e.g. a frozen SAM loaded from `sam.path`): those are not written,
and loading checks that exactly they are missing.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model

LATEST = "latest"


class DamagedCheckpoint(ValueError):
    """A checkpoint file that cannot be read back (truncated, not what its name says)."""


class NoSpaceError(OSError):
    """A checkpoint that did not fit on its disk; the previous checkpoint is intact."""

    def __str__(self) -> str:
        return str(self.args[0])


def _fsync_dir(path: Path) -> None:
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def capture_rng() -> dict[str, Any]:
    """The RNG streams training draws from (augmentation draws from sampler seeds, not from these)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _elsewhere(model: torch.nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "weights_from_elsewhere", tuple)())


def save_weights(model: torch.nn.Module, path: Path | str) -> None:
    """The model's weights as safetensors, without the prefixes it loads from elsewhere."""
    skip = _elsewhere(model)
    if not skip:
        save_model(model, str(path))  # handles tied weights
        return
    state = {
        name: value.contiguous() for name, value in model.state_dict().items() if not name.startswith(skip)
    }
    save_file(state, str(path))


def load_weights(model: torch.nn.Module, path: Path | str, device: str = "cpu") -> None:
    """Load `save_weights` output in place; anything missing beyond the model's own prefixes is an error."""
    skip = _elsewhere(model)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        missing, unexpected = load_model(model, str(path), strict=not skip, device=device)
    except (SafetensorError, OSError) as error:
        raise DamagedCheckpoint(f"{path} cannot be read ({error})") from None
    except RuntimeError as error:  # torch's load_state_dict: missing keys or other shapes
        reason = " ".join(str(error).split())[:300]  # one line
        raise DamagedCheckpoint(f"{path} does not fit the model: {reason}") from None
    missing = [name for name in missing if not name.startswith(skip)]
    if missing or unexpected:
        raise DamagedCheckpoint(
            f"{path} does not fit the model: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}"
        )


def save_checkpoint(
    directory: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    rng_state: dict[str, Any],
    accelerator,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint `step` atomically (every process calls this: each writes its own RNG)."""
    final = directory / f"step_{step:07d}"
    temporary = directory / f".tmp_step_{step:07d}"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
    accelerator.wait_for_everyone()
    with _no_space_named(temporary, accelerator.unwrap_model(model)):
        torch.save(rng_state, temporary / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with _no_space_named(temporary, accelerator.unwrap_model(model)):
            save_weights(accelerator.unwrap_model(model), temporary / "model.safetensors")
            torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
            torch.save(scheduler.state_dict(), temporary / "scheduler.pt")
            (temporary / "state.json").write_text(
                json.dumps({**state, "step": step, "processes": accelerator.num_processes}, indent=1)
            )
            for file in temporary.iterdir():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if final.exists():  # a re-run of the same step: move the old one aside first
            shutil.rmtree(final)
        os.replace(temporary, final)
        _fsync_dir(directory)
        write_text_atomic(directory / LATEST, final.name)
        complete = sorted(p for p in directory.glob("step_*") if p.is_dir())
        for old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


@contextmanager
def _no_space_named(temporary: Path, model: torch.nn.Module):
    """A full disk while writing a checkpoint: the partial files removed, and one NoSpaceError that
    names the disk, what is free there and about what a checkpoint needs."""
    try:
        yield
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if error.errno != errno.ENOSPC:
            raise
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        free = shutil.disk_usage(temporary.parent).free
        raise NoSpaceError(
            f"no space left on the disk of {temporary.parent} while writing a checkpoint: "
            f"{free / 2**20:.0f} MiB free, a checkpoint needs about {3 * weights / 2**20:.0f} MiB "
            f"(weights and optimizer state). The previous checkpoint is intact; free some space and "
            f"continue with --resume"
        ) from None


def is_complete(path: Path) -> bool:
    """A checkpoint directory with every file `save_checkpoint` writes (it is renamed into place
    only when complete, but a copy or a partial delete may leave less). A file that is there but
    damaged counts as there: loading names it (`load_checkpoint`)."""
    if not (path / "state.json").is_file() or not (path / "model.safetensors").is_file():
        return False
    try:
        processes = json.loads((path / "state.json").read_text()).get("processes", 1)
    except (ValueError, AttributeError):
        return True
    return all((path / f"rng_{rank}.pt").is_file() for rank in range(processes))


def complete_checkpoints(directory: Path) -> list[Path]:
    """Every complete checkpoint directory, newest first."""
    return sorted(
        (p for p in directory.glob("step_*") if p.is_dir() and is_complete(p)),
        key=lambda p: p.name,
        reverse=True,
    )


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint: what `latest` names, or a newer complete one that a run
    killed between writing it and updating `latest` left behind. None when there is none."""
    complete = complete_checkpoints(directory)
    return complete[0] if complete else None


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("_")[1])


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json; DamagedCheckpoint naming the file when it cannot be read."""
    return _read(path / "state.json", lambda file: _state(json.loads(file.read_text())))


def _state(record: Any) -> dict[str, Any]:
    needed = ("step", "processes")
    if not isinstance(record, dict) or any(key not in record for key in needed):
        raise ValueError(f"expected a mapping with {', '.join(needed)}")
    return record


def _read(file: Path, reader):
    """`reader(file)`, or DamagedCheckpoint naming the file and what is wrong with it."""
    try:
        return reader(file)
    except DamagedCheckpoint:
        raise
    except Exception as error:  # a damaged file fails in whatever way its reader fails: name it
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DamagedCheckpoint(f"{file} cannot be read ({reason})") from None


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scheduler, accelerator
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights, optimizer and scheduler in place; return (trainer state, this process's RNG state).
    A file that cannot be read is a DamagedCheckpoint naming it."""
    state = read_state(path)
    if state["processes"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {state['processes']} process(es) but this run has {accelerator.num_processes}; "
            f"resume with the same number of processes to continue bit for bit"
        )
    # Under `accelerate launch` a CPU process's device is "cpu:0", which safetensors and torch.load
    # refuse; CPU tensors load as "cpu", and the optimizer moves its state to the parameters' device.
    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    _read(
        path / "model.safetensors",
        lambda file: load_weights(accelerator.unwrap_model(model), file, device=device),
    )
    _read(
        path / "optimizer.pt",
        lambda file: optimizer.load_state_dict(torch.load(file, map_location=device, weights_only=True)),
    )
    _read(path / "scheduler.pt", lambda file: scheduler.load_state_dict(torch.load(file, weights_only=True)))
    rng = _read(
        path / f"rng_{accelerator.process_index}.pt", lambda file: torch.load(file, weights_only=True)
    )
    return state, rng
