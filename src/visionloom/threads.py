"""How many CPU threads torch uses, set before torch starts.

torch's default (one OpenMP thread per logical CPU, spinning while it waits) suits an idle
machine. On a shared one it is costly: with the other core busy, the VQ fit took 1.54 CPU-s per
step on 2 threads against 0.75 on one, and under a load of 4 on 2 cores 1.95 against 0.73, because
OpenMP threads spin while they wait for a descheduled sibling (measured on the 2-core machine with
`benchmarks/threads.py`). So every command:

- uses as many threads as the cores this process may run on (its CPU affinity, one per physical
  core), or what `--threads` or `OMP_NUM_THREADS` says;
- lets waiting OpenMP threads sleep (`OMP_WAIT_POLICY=PASSIVE`) unless the user set a policy;
  that took the loaded 2-thread step from 1.95 to 0.84 CPU-s.

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
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads
