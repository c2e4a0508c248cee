"""`visionloom config show`: every shipped config, resolved, as YAML that reads back to the same config."""

from __future__ import annotations

import importlib

import pytest
import yaml
from typer.testing import CliRunner

from visionloom.cli import CONFIG_LOADERS, app
from visionloom.config import CONFIG_ROOT, to_dict

SHIPPED = [
    f"{system}/{path.stem}"
    for system in CONFIG_LOADERS
    for path in sorted((CONFIG_ROOT / system).glob("*.yaml"))
]


def test_every_system_ships_configs():
    assert {target.split("/")[0] for target in SHIPPED} == set(CONFIG_LOADERS)


@pytest.mark.parametrize("target", SHIPPED)
def test_show_prints_the_resolved_config_with_types_and_defaults(target):
    result = CliRunner().invoke(app, ["config", "show", target])
    assert result.exit_code == 0, result.output
    system, name = target.split("/")
    expected = to_dict(importlib.import_module(CONFIG_LOADERS[system]).load_config(name))
    assert yaml.safe_load(result.output) == expected  # the comments are YAML comments
    value_lines = [line for line in result.output.splitlines()[1:] if not line.rstrip().endswith(":")]
    assert value_lines and all(
        "  # " in line and ("; default " in line or "; required" in line) for line in value_lines
    )


def test_show_applies_set_and_names_a_bad_target():
    result = CliRunner().invoke(app, ["config", "show", "retrieval/phase4", "--set", "train.steps=7"])
    assert yaml.safe_load(result.output)["train"]["steps"] == 7
    assert "steps: 7  # an integer >= 1 or null; default 500" in result.output
    bad = CliRunner().invoke(app, ["config", "show", "phase4"])
    assert bad.exit_code == 2 and "expected SYSTEM/NAME with SYSTEM one of retrieval, grounding" in bad.output
    unknown = CliRunner().invoke(app, ["config", "show", "retrieval/phase9"])
    assert unknown.exit_code == 2 and "no retrieval config named 'phase9'; known: baseline" in unknown.output
