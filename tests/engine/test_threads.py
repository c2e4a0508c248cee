"""Thread settings: --threads over OMP_NUM_THREADS over the physical cores; waiting threads sleep."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from visionloom.threads import configure_threads, physical_cores_available


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.setenv(name, "")  # recorded, so the test's own changes are undone afterwards
        monkeypatch.delenv(name)
    import visionloom.threads as threads

    monkeypatch.setattr(
        threads, "_state", dict(threads._state)
    )  # whether threads are governed, restored after
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_requested_beats_environment_beats_cores(clean_env):
    import os

    assert configure_threads(None) == physical_cores_available()
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads(None) == 3 and torch.get_num_threads() == 3
    assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"  # child processes inherit the choice


def test_waiting_threads_sleep_only_on_a_busy_machine_with_a_fixed_count(clean_env):
    import os

    from visionloom import threads

    clean_env.setattr(threads.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    configure_threads(2)
    assert "OMP_WAIT_POLICY" not in os.environ  # idle: OpenMP's own spinning, the faster there
    clean_env.setattr(threads.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    configure_threads(None)  # a count that follows the load: it drops to one thread instead
    assert "OMP_WAIT_POLICY" not in os.environ
    configure_threads(2)  # --threads 2: fixed, so its waiting threads sleep on a busy machine
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_a_users_wait_policy_is_kept_and_zero_threads_refused(clean_env):
    import os

    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    configure_threads(2)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        configure_threads(0)


def test_cli_threads_reach_torch_before_it_starts():
    # In a fresh interpreter: the option is set in the environment before torch is imported.
    probe = (
        "from typer.testing import CliRunner; from visionloom.cli import app; import sys\n"
        "r = CliRunner().invoke(app, ['--threads', '1', 'preset', 'list'])\n"
        "assert r.exit_code == 0, r.output\n"
        "import torch, os; print(torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY', 'default'))"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
    }
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split()[-2] == "1"  # the wait policy depends on the load: tested above


class FakeMachine:
    """The clocks the governor reads: wall time, the machine's busy CPU seconds, this process's."""

    def __init__(self, monkeypatch):
        import visionloom.threads as threads

        self.wall = self.busy = self.own = 0.0
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.wall)
        monkeypatch.setattr(threads.time, "process_time", lambda: self.own)
        monkeypatch.setattr(threads, "_busy_seconds", lambda: self.busy)
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.wall += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + other_cores)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_thread_count_follows_the_other_processes_while_a_run_goes_on(
    monkeypatch, clean_env, two_threads
):
    import visionloom.threads as threads

    configure_threads(None)  # chosen here: the count may follow the load
    torch.set_num_threads(2)
    machine = FakeMachine(monkeypatch)
    governor = threads.ThreadGovernor(interval=2.0)
    machine.run(2.0, own_cores=2.0, other_cores=0.0)
    assert governor.update() == 2  # idle: all cores
    machine.run(2.0, own_cores=1.0, other_cores=1.0)  # a busy process arrives and takes a core
    assert governor.update() == 1 and torch.get_num_threads() == 1
    machine.run(1.0, own_cores=1.0, other_cores=0.0)
    assert governor.update() == 1  # measured only every 2 s
    machine.run(2.0, own_cores=1.0, other_cores=0.0)  # it left
    assert governor.update() == 2 and torch.get_num_threads() == 2
    machine.run(2.0, own_cores=0.7, other_cores=1.3)  # two busy processes share the machine with it
    assert governor.update() == 1
    assert [threads for _, threads in governor.changes] == [1, 2, 1]


def test_a_count_the_user_chose_stays_fixed_under_load(monkeypatch, clean_env, two_threads):
    import visionloom.threads as threads

    configure_threads(2)  # --threads 2
    machine = FakeMachine(monkeypatch)
    governor = threads.ThreadGovernor(interval=2.0)
    machine.run(2.0, own_cores=1.0, other_cores=1.0)
    assert governor.update() == 2 and governor.changes == []
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's environment, not a count visionloom wrote
    monkeypatch.setitem(threads._state, "written", None)
    configure_threads(None)
    assert not threads.ThreadGovernor().enabled
