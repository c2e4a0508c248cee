"""YAML experiment configs as dataclasses: unknown keys are errors that name the key and the file.

A config is found by name under `configs/<system>/NAME.yaml` or given as a path; `--set a.b=value`
overrides any field (the value is read as YAML, so `--set train.steps=50` gives an int).

Every value is checked against the field's declared type before the dataclass is built: a bool
is `true` or `false` and nothing else (so `allow_pickle: "false"` or `n` is refused, never
truthy), numbers must be numbers, `Literal[...]` lists the allowed choices and
`Annotated[..., Range(...)]` the allowed interval. The error names the file, the key, what is
allowed and what was given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import json
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml

# The experiment configs ship inside the package (src/visionloom/configs/<system>/NAME.yaml), so
# a name resolves the same from a source checkout and from an installed wheel.
CONFIG_ROOT = Path(str(importlib.resources.files("visionloom") / "configs"))

T = TypeVar("T")


class ConfigError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """YAML as people write configs: `3e-4` is a number (YAML 1.2 reads it so; PyYAML's YAML 1.1
    wants `3.0e-4` and would give the string "3e-4"), and no aliases (`*name`): a config has no use
    for them, and nested aliases expand to billions of values once the config is walked."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed in a config", event.start_mark
            )
        return super().compose_node(parent, index)


# YAML 1.2's floats on top of PyYAML's 1.1 resolver (written here: PyYAML has no 1.2 mode).
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text as a config reads it (see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclasses.dataclass(frozen=True)
class Range:
    """The interval a number must lie in; `open_low` excludes the lower bound."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, open_low=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]  # 0 <= x <= 1
ShareOfOne = Annotated[float, Range(0, 1, open_low=True)]  # 0 < x <= 1


def find_config(system: str, name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    candidate = CONFIG_ROOT / system / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"no {system} config named {name_or_path!r}; known: {', '.join(config_names(system))}"
        )
    return candidate


def config_names(system: str) -> list[str]:
    """The configs shipped for `system`: NAME, or FOLDER/NAME for a recipe set (cuhk-pedes/phase4)."""
    root = CONFIG_ROOT / system
    return sorted(str(path.relative_to(root).with_suffix("")) for path in root.rglob("*.yaml"))


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        key, value = split_override(item)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {part} is not a section")
        try:
            node[parts[-1]] = parse_yaml(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({_yaml_problem(error)})") from None
    return raw


def split_override(item: str) -> tuple[str, str]:
    """`KEY=VALUE` of --set as (KEY, VALUE); a ConfigError naming the item otherwise."""
    key, equals, value = item.partition("=")
    if not equals or not key.strip() or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=50")
    return key.strip(), value


def override_sources(overrides: list[str]) -> dict[str, str]:
    """Each overridden key (and each key below it) -> the --set item that gave it, for errors."""
    return {split_override(item)[0]: f"--set {item}" for item in overrides}


def _yaml_problem(error: yaml.YAMLError) -> str:
    return getattr(error, "problem", None) or str(error)


def describe(hint: Any) -> str:
    """What a type hint allows, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return f"{describe(args[0])} {' and '.join(str(check) for check in args[1:])}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of ({describe(args[0])})"
    if origin is tuple:
        return f"a list of {len(args)}: [{', '.join(describe(a) for a in args)}]"
    if origin is list:
        return f"a list of ({describe(args[0])})" if args else "a list"
    if origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _source(source: str, key: str, given: dict[str, str] | None) -> str:
    """Where `key`'s value came from: the --set item that set it (or a section above it), else the file."""
    parts = key.replace("[", ".[").split(".")
    for end in range(len(parts), 0, -1):
        found = (given or {}).get(".".join(parts[:end]).replace(".[", "["))
        if found:
            return found
    return source


def _convert(hint: Any, value: Any, source: str, key: str, given: dict[str, str] | None = None) -> Any:
    """`value` checked (and converted, e.g. int -> float) against `hint`; ConfigError naming `key`
    and where its value came from (`given`: keys set on the command line, see `override_sources`)."""
    source = _source(source, key, given)

    def refuse() -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {describe(hint)}, got {value!r}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a section (a mapping), got {value!r}")
        return from_dict(hint, value, source, f"{key}.", given)
    if origin is Annotated:
        converted = _convert(args[0], value, source, key, given)
        if any(isinstance(check, Range) and not check.admits(converted) for check in args[1:]):
            raise refuse()
        return converted
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise refuse()
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, source, key, given)
            except ConfigError:
                continue
        raise refuse()
    if origin is Literal:
        if any(type(value) is type(choice) and value == choice for choice in args):
            return value
        raise refuse()
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
        if not isinstance(value, (list, tuple)) or not value:
            raise refuse()
        return tuple(_convert(args[0], v, source, f"{key}[{i}]", given) for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise refuse()
        return tuple(
            _convert(a, v, source, f"{key}[{i}]", given)
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise refuse()
        return (
            [_convert(args[0], v, source, f"{key}[{i}]", given) for i, v in enumerate(value)]
            if args
            else list(value)
        )
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise refuse()
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise refuse()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise refuse()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise refuse()
        return value
    return value


def from_dict(
    cls: type[T], raw: dict, where: str = "config", prefix: str = "", given: dict[str, str] | None = None
) -> T:
    """A `cls` from a mapping, every value checked against its field's type (see the module docstring).
    `given`: the keys set on the command line (`override_sources`), named in errors instead of `where`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the file'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{_source(where, prefix + unknown[0], given)}: unknown key(s) "
            f"{', '.join(prefix + u for u in unknown)}; known: {', '.join(prefix + n for n in sorted(names))}"
        )
    values = {key: _convert(hints[key], value, where, prefix + key, given) for key, value in raw.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        section = prefix.rstrip(".")
        related = [
            item
            for key, item in (given or {}).items()
            if not section or key == section or key.startswith(section + ".")
        ]
        shown = where + (f" with {' '.join(related)}" if related else "")
        raise ConfigError(f"{shown}: {section or 'config'}: {error}") from None


def read_yaml(path: Path) -> Any:
    """A YAML file's content; a ConfigError naming the file and line when it is not valid YAML."""
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def read_json(path: Path, error: type[ValueError] = ConfigError) -> Any:
    """A JSON file's content; `error` (naming the file and the fault) when it is not UTF-8 JSON.

    Every file a user hands the project (checkpoint configs, annotations) is read through here, each
    caller choosing the error its own callers catch.
    """
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as fault:
        raise error(f"{path}: not UTF-8 text (byte {fault.start}: {fault.reason})") from None
    except json.JSONDecodeError as fault:
        raise error(f"{path}: not valid JSON ({fault})") from None
    except RecursionError:
        raise error(
            f"{path}: nested too deeply to be a data file (over {sys.getrecursionlimit()} levels)"
        ) from None


def load(cls: type[T], path: Path, overrides: list[str] | None = None) -> T:
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    overrides = overrides or []
    return from_dict(cls, apply_overrides(raw, overrides), str(path), given=override_sources(overrides))


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


# What may change when a run is resumed: how long it runs and how often it logs, validates and
# saves. Everything else would make the continued run a different experiment from its start.
RESUMABLE_KEYS = (
    "train.steps",
    "train.epochs",
    "train.eval_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.num_workers",
)


def explain(config: Any, indent: int = 0) -> list[str]:
    """A resolved config as YAML lines, each value followed by what its key allows and its default
    (what `visionloom config show` prints)."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    lines = []
    for field in dataclasses.fields(config):
        value, pad = getattr(config, field.name), "  " * indent
        if dataclasses.is_dataclass(value):
            lines += [f"{pad}{field.name}:", *explain(value, indent + 1)]
            continue
        if field.default is not dataclasses.MISSING:
            default = f"; default {_inline(field.default)}"
        elif field.default_factory is not dataclasses.MISSING:
            default = f"; default {_inline(field.default_factory())}"
        else:
            default = "; required"
        lines.append(f"{pad}{field.name}: {_inline(value)}  # {describe(hints[field.name])}{default}")
    return lines


def _inline(value: Any) -> str:
    plain = json.loads(json.dumps(value, default=str))  # tuples to lists, as the YAML holds them
    if isinstance(plain, str) and "\n" in plain:
        return json.dumps(plain)  # one line, and a valid YAML double-quoted string
    return yaml.safe_dump(plain, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def differing_keys(before: Any, after: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every value that differs between two nested mappings."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = list(dict.fromkeys([*before, *after]))
        return [
            change
            for key in keys
            for change in differing_keys(before.get(key), after.get(key), f"{prefix}{key}.")
        ]
    return [] if before == after else [(prefix.rstrip("."), before, after)]


def _fill_missing(saved: Any, defaults: Any) -> Any:
    if not (isinstance(saved, dict) and isinstance(defaults, dict)):
        return saved
    filled = {key: _fill_missing(value, defaults.get(key)) for key, value in saved.items()}
    return {**{key: value for key, value in defaults.items() if key not in saved}, **filled}


def _field_defaults(config: Any) -> dict:
    """Each field's own default, a nested config's taken from its own type: what a key means when
    it is absent. A parent that builds a nested config with other values (the scene-VLM config's
    `train` with its warm restart) states a recipe, not what a run written before the key did."""
    defaults = to_dict(type(config)())
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            # a nested type without defaults for every field keeps the parent's
            with contextlib.suppress(TypeError):
                defaults[item.name] = _field_defaults(value)
    return defaults


def saved_config(path: Path, config: Any) -> dict:
    """A run's config.yaml as a mapping, with the keys that `config`'s type gained since the run
    was written filled with their fields' own defaults: a run from before a new setting compares
    equal to one that leaves it at its default."""
    saved = read_yaml(path) or {}
    try:
        defaults = _field_defaults(config)
    except TypeError:  # a config type without defaults for every field: nothing to fill
        return saved
    return _fill_missing(saved, defaults)


def check_resumed_config(run_dir: Path, config: Any) -> None:
    """On --resume, only RESUMABLE_KEYS may differ from what RUN/config.yaml was trained with (a
    longer train.steps extends the run); any other change is refused, naming the key."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    refused = [
        f"{key}: {old!r} -> {new!r}"
        for key, old, new in differing_keys(saved_config(saved, config), to_dict(config))
        if key not in RESUMABLE_KEYS
    ]
    if refused:
        raise ConfigError(
            f"--resume cannot change what {saved} was trained with: {'; '.join(refused)}. Only "
            f"{', '.join(RESUMABLE_KEYS)} may change on --resume."
        )


def save_run_config(run_dir: Path, config: Any) -> None:
    """Write RUN/config.yaml (a resumed run checks it first: `check_resumed_config`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def parse_size(text: str) -> tuple[int, int]:
    """HEIGHTxWIDTH, as the CLI's --image-size takes it, to (height, width)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--image-size {text!r}: expected HEIGHTxWIDTH, e.g. 384x128") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"--image-size {text!r}: height and width must be positive, e.g. 384x128")
    return height, width
