"""YAML experiment configs as dataclasses: unknown keys are errors that name the key and the file.

A config is found by name under `configs/<system>/NAME.yaml` or given as a path; `--set a.b=value`
overrides any field (the value is read as YAML, so `--set train.steps=50` gives an int).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def find_config(system: str, name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    candidate = CONFIG_ROOT / system / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in (CONFIG_ROOT / system).glob("*.yaml"))
        raise ConfigError(f"no {system} config named {name_or_path!r}; known: {', '.join(known)}")
    return candidate


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=50")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def _convert(cls: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(cls)
    if dataclasses.is_dataclass(cls):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section, got {value!r}")
        return from_dict(cls, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if cls is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type[T], raw: dict, where: str = "config") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = {key: _convert(hints[key], value, f"{where}.{key}") for key, value in raw.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None


def load(cls: type[T], path: Path, overrides: list[str] | None = None) -> T:
    raw = yaml.safe_load(path.read_text()) or {}
    return from_dict(cls, apply_overrides(raw, overrides or []), str(path))


def to_dict(config: Any) -> dict:
    def plain(value):
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def save_run_config(run_dir: Path, config: Any, resume: bool) -> None:
    """Write RUN/config.yaml; on --resume, refuse a config other than the one the run was trained with."""
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    resolved = yaml.safe_dump(to_dict(config), sort_keys=False)
    if resume and saved.is_file() and saved.read_text() != resolved:
        raise ValueError(f"--resume with another config than {saved} was trained with; use the same config")
    saved.write_text(resolved)
