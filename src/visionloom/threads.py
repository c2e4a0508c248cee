"""How many CPU threads torch uses, and how its waiting threads wait, set before torch starts.

torch's default (one OpenMP thread per logical CPU, spinning while it waits) suits an idle
machine. On a shared one it is costly, because a thread spins while it waits for a descheduled
sibling. Measured with `benchmarks/threads.py` on the 2-core machine, VQ fit, 2 threads:

| machine | spin (torch's default) | passive |
|---|---|---|
| idle | 0.88 CPU-s, 0.45 s wall per step | 0.94 CPU-s, 0.60 s wall |
| load 2 (two busy processes) | 1.62 CPU-s, 1.63 s wall | 0.92 CPU-s, 1.05 s wall |

Neither wins everywhere, so every command:

- uses as many threads as the physical cores this process may run on (its CPU affinity), or
  what `--threads` or `OMP_NUM_THREADS` says;
- lets waiting threads sleep (`OMP_WAIT_POLICY=PASSIVE`) when the user fixed the count and the
  machine is already busy at start (1-minute load average at least the thread count), and keeps
  OpenMP's spinning otherwise, unless the user set a policy. A count chosen here follows the load
  instead (below), which a decision taken once at start cannot: a load average still high from
  work that has finished made whole runs wait passively on an idle machine, and slower.

Both must be in the environment before torch is imported, which the CLI's callback guarantees.

A decision taken once at start does not survive a machine that fills up later: two threads on a
machine where other processes took one core wait on each other for every descheduled sibling,
several times slower when they spin (`benchmarks/under_load.py`). So while a run trains, `ThreadGovernor`
follows the load: every few seconds it reads how much CPU the other processes used (Linux's
/proc/stat, less this process's own CPU time) and sets torch's thread count to the cores they
left free, between 1 and the count chosen at start. A count the user chose (`--threads`,
`OMP_NUM_THREADS`) is kept as it is.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def physical_cores_available() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once)."""
    allowed = (
        sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    )
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:  # no sysfs (macOS, some containers): count logical CPUs
            cores.add(str(cpu))
    return max(1, len(cores))


def machine_is_busy(threads: int) -> bool:
    """Whether other work already occupies the cores: the 1-minute load average is at least `threads`."""
    try:
        return os.getloadavg()[0] >= threads
    except OSError:  # no load average on this platform
        return False


# "governed": the count was chosen here and may follow the load (not the user's `--threads` or
# OMP_NUM_THREADS, which stay fixed; nor a process that never configured threads, e.g. a library
# user's). "written": the OMP_NUM_THREADS this module wrote, so a second call does not take it for the user's.
_state: dict = {"governed": False, "written": None}


def configure_threads(requested: int | None = None) -> int:
    """Set the thread count (requested > OMP_NUM_THREADS > physical cores) and the wait policy.

    Returns the count. If torch is already imported, it is told directly as well.
    """
    if requested is not None and requested < 1:
        raise ValueError(f"--threads must be at least 1, got {requested}")
    given = os.environ.get("OMP_NUM_THREADS")
    users = given if given != _state["written"] else None
    if requested is not None:
        threads = requested
    elif users is not None and users.isdigit() and int(users) > 0:
        threads = int(users)
    else:
        threads = physical_cores_available()
    _state["governed"] = requested is None and users is None
    _state["written"] = str(threads)
    # torch reads MKL_NUM_THREADS too and lets it win, so both say the same.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    # A count that follows the load drops to one thread when the machine fills up, and one thread
    # waits on no sibling: spinning costs nothing there and is faster idle. A fixed count cannot
    # adapt, so there waiting threads sleep when the machine is busy at start.
    if "OMP_WAIT_POLICY" not in os.environ and not _state["governed"] and machine_is_busy(threads):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


def _busy_seconds() -> float | None:
    """CPU seconds every CPU of the machine spent busy since boot (/proc/stat), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Torch's thread count, following the load while a run goes on (see the module docstring).

    `update()` is cheap to call every step: it measures only every `interval` seconds.
    """

    def __init__(self, interval: float = 2.0):
        import torch

        self.torch = torch
        self.most = torch.get_num_threads()
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.enabled = _state["governed"] and self.most > 1 and _busy_seconds() is not None
        self.interval = interval
        self.changes: list[tuple[float, int]] = []  # (seconds into the run, threads) at each change
        self.busy_elsewhere = 0.0  # CPUs the other processes kept busy in the last measured window
        self._started = time.monotonic()
        self._last = self._measure()

    def _measure(self) -> tuple[float, float, float]:
        return time.monotonic(), _busy_seconds() or 0.0, time.process_time()

    def others(self, since: tuple[float, float, float], now: tuple[float, float, float]) -> float:
        """Cores the other processes kept busy between two measurements."""
        wall = max(now[0] - since[0], 1e-9)
        return max(0.0, ((now[1] - since[1]) - (now[2] - since[2])) / wall)

    def update(self) -> int:
        """The thread count now; changed when the other processes' load says so."""
        current = self.torch.get_num_threads()
        if not self.enabled or time.monotonic() - self._last[0] < self.interval:
            return current
        now = self._measure()
        self.busy_elsewhere = self.others(self._last, now)
        free = self.cpus - self.busy_elsewhere
        self._last = now
        wanted = max(1, min(self.most, int(free + 0.5)))
        if wanted != current:
            self.torch.set_num_threads(wanted)
            self.changes.append((round(now[0] - self._started, 1), wanted))
        return wanted
