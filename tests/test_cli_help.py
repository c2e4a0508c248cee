"""The CLI's help reads right: switches shown as switches, --set as KEY=VALUE, every option explained."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from visionloom.cli import app


def all_commands():
    """(path, click command) for every command and group of the app."""
    found = []

    def walk(command, path):
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = all_commands()


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "visionloom" for p, _ in COMMANDS])
def test_help_shows_switches_as_switches_and_explains_every_option(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "list[str]" not in result.output
    if "--set" in result.output:
        assert "KEY=VALUE" in result.output
    undocumented = [
        param.opts[0]
        for param in command.params
        if param.param_type_name == "option" and not (param.help or "").strip()
    ]
    assert not undocumented, f"{' '.join(path)}: options without help: {undocumented}"


def test_output_does_not_depend_on_the_terminal_width(tmp_path):
    # A long path and a verdict: at 40 columns rich used to break both across lines.
    root = tmp_path / ("a-rather-long-folder-name-" * 3) / "pedes"
    runner = CliRunner()
    assert runner.invoke(app, ["data", "synth-pedes", str(root), "--ids", "10"]).exit_code == 0
    outputs = {}
    for columns in ("40", "200"):
        result = runner.invoke(app, ["data", "check", str(root)], env={"COLUMNS": columns})
        assert result.exit_code == 0, result.output
        outputs[columns] = result.output.replace("0:00:01", "0:00:00")  # the only varying part
    assert outputs["40"] == outputs["200"]
    assert f"ok {root} (cuhk-pedes): no problems" in outputs["40"]
    bad = runner.invoke(
        app, ["data", "synth-scenes", str(tmp_path / "s"), "--scenes", "5"], env={"COLUMNS": "40"}
    )
    assert bad.exit_code == 2
    assert "--scenes 5: need at least 10 scenes to fill train, val and test" in bad.output


def test_the_old_vq_spelling_says_where_the_commands_went(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["vq", "cache", str(tmp_path)])
    assert "`visionloom vq cache` is now `visionloom retrieval vq cache`" in result.output
    assert result.exit_code == 2 and "no annotation file" in result.output  # and it ran that
    assert "vq" not in runner.invoke(app, ["--help"]).output.split("Commands")[1]
