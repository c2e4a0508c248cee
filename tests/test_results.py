"""Results files: what they record about the command, the code and the machine."""

from __future__ import annotations

import json

import pytest

from visionloom import results


def test_a_script_and_a_command_are_recorded_as_typed(monkeypatch):
    monkeypatch.setattr("sys.argv", ["benchmarks/one_pass.py", "--results", "out dir/x.json"])
    assert results.command_line() == "python benchmarks/one_pass.py --results 'out dir/x.json'"
    monkeypatch.setattr("sys.argv", ["/venv/bin/visionloom", "demo", "--quick"])
    assert results.command_line() == "visionloom demo --quick"


def test_a_results_file_holds_figures_and_provenance(tmp_path):
    path = results.write_results(
        tmp_path / "r" / "x.json", "one_pass", {"ratio": 1.5}, seeds=[0], config={"a": 1}
    )
    record = results.read_results(path)
    assert record["figures"] == {"ratio": 1.5} and record["seeds"] == [0]
    assert record["config_sha256"] == results.config_sha256({"a": 1}) != results.config_sha256({"a": 2})
    assert record["machine"]["usable_cpus"] >= 1 and "load_average_at_start" in record["machine"]
    assert not list(tmp_path.rglob(".*.tmp"))  # written through a temporary file, renamed


def test_a_file_without_provenance_is_named(tmp_path):
    path = tmp_path / "bare.json"
    path.write_text(json.dumps({"kind": "demo", "figures": {}}))
    with pytest.raises(ValueError, match="bare.json: a results file needs command"):
        results.read_results(path)
