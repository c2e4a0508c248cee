"""Off a terminal, progress comes as plain lines while the job runs, and lands in RUN/train.log."""

from __future__ import annotations

import os
import subprocess
import sys

from visionloom import progress


def test_plain_track_reports_start_tenths_and_end(monkeypatch, capsys):
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    monkeypatch.setattr(progress, "PLAIN_LINE_MIN_SECONDS", 0.0)
    assert list(progress.track(range(20), "counting")) == list(range(20))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "counting: started (20 items)"
    assert [line.split(",")[0] for line in lines[1:-1]] == [
        f"counting: {2 * k}/20 ({10 * k}%)" for k in range(1, 10)
    ]
    assert lines[-1].startswith("counting: done, 20 items in ")


def test_a_quick_phase_gets_only_its_start_and_end(monkeypatch, capsys):
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    list(progress.track(range(1000), "quick"))
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_piped_training_prints_step_lines_while_it_runs(pedes_root, tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "visionloom.cli", "--threads", "1", "retrieval", "train", "baseline",
        "--data", str(pedes_root), "--out", str(run),
        "--set", "train.steps=20", "--set", "train.batch_size=4", "--set", "data.ids_per_batch=2",
        "--set", "train.log_every=2", "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10",
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "80"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as job:
        seen = []
        for line in job.stdout:
            seen.append(line.rstrip("\n"))
            if line.startswith("step 10/20"):
                # Read from the pipe before the job ended: progress arrives while it runs.
                assert job.poll() is None
        assert job.wait() == 0, "\n".join(seen)
    steps = [line for line in seen if line.startswith("step ")]
    assert [line.split(" |")[0] for line in steps] == [f"step {2 * k}/20 ({10 * k}%)" for k in range(1, 11)]
    assert all(" | loss " in line and " samples/s | " in line and "| ETA " in line for line in steps)
    assert any(line.startswith("validation at step 10: R1 ") for line in seen)
    assert any(line.startswith("test: R1 ") for line in seen)
    logged = (run / "train.log").read_text().splitlines()
    # The same lines, each after a timestamp.
    for line in steps + [line for line in seen if line.startswith(("train:", "validation", "test:"))]:
        assert any(entry.endswith(" " + line) for entry in logged), line
