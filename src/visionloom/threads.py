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
- lets waiting threads sleep (`OMP_WAIT_POLICY=PASSIVE`) when the machine is already busy at
  start (1-minute load average at least the thread count), and keeps OpenMP's spinning on an
  idle one, unless the user set a policy.

Both must be in the environment before torch is imported, which the CLI's callback guarantees.
"""

from __future__ import annotations

import os
import sys
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


def configure_threads(requested: int | None = None) -> int:
    """Set the thread count (requested > OMP_NUM_THREADS > physical cores) and the wait policy.

    Returns the count. If torch is already imported, it is told directly as well.
    """
    if requested is not None and requested < 1:
        raise ValueError(f"--threads must be at least 1, got {requested}")
    if requested is not None:
        threads = requested
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads = int(os.environ["OMP_NUM_THREADS"])
    else:
        threads = physical_cores_available()
    # torch reads MKL_NUM_THREADS too and lets it win, so both say the same.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    if "OMP_WAIT_POLICY" not in os.environ and machine_is_busy(threads):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads
