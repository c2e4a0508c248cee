"""Ctrl-C, as a real SIGINT to a real process: it says what was saved and the exact command that
continues, and that command does continue."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import sigint_as_from_a_terminal

CLI = [sys.executable, "-m", "visionloom.cli", "--threads", "1"]


def interrupt_when(
    command: list[str], marker: str, env: dict[str, str] | None = None
) -> tuple[int, list[str], str]:
    """Run `command` (with `env` added to the environment), send SIGINT once a stdout line starts
    with `marker`; (exit code, stdout, stderr). The seconds from the signal to the exit are kept in
    `interrupt_when.seconds`."""
    env = {**os.environ, "COLUMNS": "80", **(env or {})}
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=sigint_as_from_a_terminal,
    ) as job:
        lines, signalled = [], None
        for line in job.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(marker):
                job.send_signal(signal.SIGINT)
                signalled = time.monotonic()
                break
        out, err = job.communicate(timeout=120)
        assert signalled is not None, f"no line started with {marker!r}:\n{err[-2000:]}"
        interrupt_when.seconds = time.monotonic() - signalled
        return job.returncode, lines + out.splitlines(), err


def continue_command(stderr: str) -> list[str]:
    line = next(line for line in stderr.splitlines() if "continue with: " in line)
    words = shlex.split(line.split("continue with: ", 1)[1])
    assert words[0] == "visionloom"
    return [*CLI, *words[1:]]


@pytest.mark.slow
def test_sigint_in_training_saves_and_names_the_resume_command(pedes_root, tmp_path):
    run = tmp_path / "run"
    train = [
        *CLI, "retrieval", "train", "baseline", "--data", str(pedes_root), "--out", str(run),
        "--set", "model.image_size=[64, 32]", "--set", "train.steps=60", "--set", "train.batch_size=4",
        "--set", "data.ids_per_batch=2", "--set", "train.log_every=2", "--set", "train.checkpoint_every=1000",
    ]  # fmt: skip
    code, _, err = interrupt_when(train, "step 12/60")
    assert code == 130, err
    assert "interrupted after step " in err and f"saved {run}/checkpoints/step_" in err
    again = continue_command(err)
    assert again[-1] == "--resume"
    finished = subprocess.run(again, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 60
    log = (run / "train.log").read_text()
    assert "interrupted after step" in log and "train: resumed at step" in log


@pytest.mark.slow
def test_sigint_in_the_demo_keeps_its_work_and_the_same_out_continues(tmp_path):
    out = tmp_path / "demo"
    demo = [*CLI, "demo", "--ids", "20", "--phases", "", "--steps", "40", "--out", str(out)]
    code, _, err = interrupt_when(demo, "step 10/40")
    assert code == 130, err
    assert f"continue with: visionloom --threads 1 demo --ids 20 --phases '' --steps 40 --out {out}" in err
    finished = subprocess.run(continue_command(err), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "baseline: continuing from" in finished.stdout
    assert "drawing" not in finished.stdout  # the data set was kept
    assert json.loads((out / "results.json").read_text())["figures"]["reference"]["baseline"]["steps"] == 40


def test_ctrl_c_outside_the_loop_names_the_resume_command_only_for_a_run_that_exists(
    pedes_root, tmp_path, monkeypatch
):
    # E.g. during the final evaluation, after training ended: nothing is lost, --resume evaluates.
    # Before the run wrote anything (reading the data), there is nothing to resume.
    from typer.testing import CliRunner

    from visionloom import cli
    from visionloom.retrieval import train as retrieval_train

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrieval_train, "train_retrieval", interrupted)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visionloom", "retrieval", "train", "baseline", "--out", "r"])
    arguments = ["retrieval", "train", "baseline", "--data", str(pedes_root), "--out", "r"]
    result = CliRunner().invoke(cli.app, arguments)
    assert result.exit_code == 130
    assert "interrupted before the run started; nothing was written" in result.output
    assert "--resume" not in result.output

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("name: baseline\n")
    result = CliRunner().invoke(cli.app, arguments)
    assert result.exit_code == 130
    assert "continue with: visionloom retrieval train baseline --out r --resume" in result.output


# Loaded by the child process at start-up (PYTHONPATH): its final evaluation takes 30 s, as a real
# one can, so that the signal surely arrives during it (on 30 tiny scenes it can end before).
SLOW_FINAL_EVALUATION = """
import time
import visionloom.engine.run as run

finish_run = run.finish_run

def slow_finish_run(run_dir, model, result, evaluate, *rest):
    def slow_evaluate(model):
        time.sleep(30)
        return evaluate(model)
    return finish_run(run_dir, model, result, slow_evaluate, *rest)

run.finish_run = slow_finish_run
"""


@pytest.mark.slow
def test_sigint_in_ground_trains_final_evaluation_stops_at_once(scenes_root, tmp_path):
    # It used to be ignored for over 35 s there.
    startup = tmp_path / "startup"
    startup.mkdir()
    (startup / "sitecustomize.py").write_text(SLOW_FINAL_EVALUATION)
    slow = {"PYTHONPATH": os.pathsep.join(filter(None, [str(startup), os.environ.get("PYTHONPATH")]))}
    run = tmp_path / "ground"
    train = [
        *CLI, "ground", "train", "llava-control", "--data", str(scenes_root), "--out", str(run),
        "--set", "train.steps=2", "--set", "train.batch_size=4",
    ]  # fmt: skip
    code, _, err = interrupt_when(train, "evaluating the selected weights", env=slow)
    assert code == 130, err
    assert interrupt_when.seconds < 15
    assert "interrupted; the run keeps its checkpoints. continue with: visionloom" in err
    again = continue_command(err)
    assert again[-1] == "--resume"
    finished = subprocess.run(again, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
