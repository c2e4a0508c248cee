"""Results files: every figure a command measures, with what it takes to measure it again.

A results file is one small JSON object:

    {"kind": "demo", "figures": {...},
     "command": "visionloom demo --out runs/demo", "commit": "c1898f7...", "commit_dirty": false,
     "date": "2026-12-04T19:02:11+00:00",
     "machine": {"cpu": ..., "logical_cpus": 2, "usable_cpus": 2, "torch_threads": 2,
                 "load_average_at_start": [0.1, 0.06, 0.39], "gpu": null, "platform": ..., ...},
     "seeds": [0, 1, 2], "config_sha256": "..."}

The load average and the commit are read when this module is first imported, which the command
line does before anything else runs: they say how busy the machine was when the measurement began
and which code ran, whatever is committed meanwhile. The docs'
tables are rendered from these files (`scripts/render_results.py`), never typed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:  # no load average on this platform
        return None


LOAD_AVERAGE_AT_START = _load_average()


def command_line() -> str:
    """The command as typed: the program's base name and its arguments, shell-quoted."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program.endswith(".py") and program != "__main__.py":  # a script: say how it was run
        words = ["python", sys.argv[0]]
    elif program in ("__main__.py", "-m"):
        words = ["python", "-m", "visionloom.cli"]
    else:
        words = [program]
    return shlex.join([*words, *sys.argv[1:]])


# What a figure depends on: a change elsewhere (the docs, the tests) does not make a measurement stale.
CODE_PATHS = ("src", "benchmarks", "scripts", "pyproject.toml")


def git_commit(directory: Path | None = None) -> tuple[str | None, bool]:
    """The commit the code runs from, and whether its code (`CODE_PATHS`) had uncommitted changes.

    (None, False) outside a git checkout, e.g. an installed wheel."""
    directory = directory or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD", "--show-toplevel"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None, False
        commit, top = head.stdout.split()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=top,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit, bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):  # no git installed
        return None, False


# Read when the command starts, like the load average: the code that runs is the code of this moment,
# whatever is committed while it runs.
COMMIT_AT_START = git_commit()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Cores, threads, load at start, GPU: what a figure measured here depends on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts: dict[str, Any] = {
        "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "load_average_at_start": LOAD_AVERAGE_AT_START,
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    torch = sys.modules.get("torch")  # only described when the command used it
    if torch is not None:
        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
        facts["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return facts


def config_sha256(config: Any) -> str:
    """A hash of a resolved config (a dataclass or plain data), independent of key order."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    canonical = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def results_record(
    kind: str, figures: dict[str, Any], *, seeds: list[int] | None = None, config: Any = None
) -> dict[str, Any]:
    """The results file's content: `figures` and where they came from."""
    commit, dirty = COMMIT_AT_START
    return {
        "kind": kind,
        "figures": figures,
        "command": command_line(),
        "commit": commit,
        "commit_dirty": dirty,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "seeds": seeds,
        "config_sha256": None if config is None else config_sha256(config),
    }


def write_results(
    path: Path | str,
    kind: str,
    figures: dict[str, Any],
    *,
    seeds: list[int] | None = None,
    config: Any = None,
) -> Path:
    """Write a results file atomically (a temporary file renamed into place).

    Args:
        path: where to write it (folders are made).
        kind: what measured the figures ("demo", "prune_eval", "one_pass", ...); it picks the
            renderer of `scripts/render_results.py`.
        figures: the measured figures, plain JSON data.
        seeds: every seed the figures depend on.
        config: the resolved config (a dataclass or plain data), recorded as its hash.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = results_record(kind, figures, seeds=seeds, config=config)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(path)
    return path


def supported(pair: dict[str, Any], interval_key: str = "interval") -> str:
    """What a compared pair's interval lets a report say: "A above B", "A below B" or "no
    difference shown". Results files keep the interval, not the sentence: the docs' renderer and
    the compare commands both decide it here, so they cannot disagree."""
    low, high = pair[interval_key]
    if low > 0:
        return f"{pair['a']} above {pair['b']}"
    if high < 0:
        return f"{pair['a']} below {pair['b']}"
    return "no difference shown"


def read_results(path: Path | str) -> dict[str, Any]:
    """A results file, checked for the fields every renderer relies on (a measured figure needs its
    provenance; a published one, of kind "published", its sources)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable results file ({error})") from None
    published = isinstance(record, dict) and record.get("kind") == "published"
    required = (
        ("kind", "figures", "sources")
        if published
        else ("kind", "figures", "command", "commit", "date", "machine")
    )
    missing = [key for key in required if key not in record] if isinstance(record, dict) else list(required)
    if missing:
        raise ValueError(f"{path}: a results file needs {', '.join(missing)}")
    return record
