"""The synthetic pedestrians' splits: a configurable validation share that leaves test as it was."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from visionloom.cli import app
from visionloom.data.synth_pedes import split_of


def test_the_default_shares_are_70_10_20_and_a_larger_val_comes_out_of_train():
    for total in range(10, 400):
        for identity in range(total):
            fraction = identity / total
            assert split_of(identity, total) == (
                "train" if fraction < 0.7 else "val" if fraction < 0.8 else "test"
            )
            wider = split_of(identity, total, 0.3)
            assert (wider == "test") == (split_of(identity, total) == "test")
            assert wider == ("train" if fraction < 0.5 else "val" if fraction < 0.8 else "test")


def test_val_share_from_the_command_line_and_its_bad_values(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["data", "synth-pedes", str(tmp_path / "d"), "--ids", "20", "--val-share", "0.3"]
    )
    assert result.exit_code == 0, result.output
    splits = {}
    for entry in json.loads((tmp_path / "d" / "reid_raw.json").read_text()):
        splits.setdefault(entry["split"], set()).add(entry["id"])
    assert {name: len(ids) for name, ids in splits.items()} == {"train": 10, "val": 6, "test": 4}
    for bad in ("0", "0.8", "0.01"):
        result = runner.invoke(
            app, ["data", "synth-pedes", str(tmp_path / bad), "--ids", "20", "--val-share", bad]
        )
        assert result.exit_code != 0 and "--val-share" in result.output and "Traceback" not in result.output
        assert not (tmp_path / bad / "reid_raw.json").exists()
