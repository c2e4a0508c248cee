"""Training on a shared machine: a fixed slice of phase-3 training, idle and beside one and two
CPU-bound processes that this script starts and stops itself, under visionloom's thread policy
(the count follows the load while the run goes on), under a fixed count of all cores (the policy
before it followed the load), and under a fixed count whose waiting threads spin
(`OMP_WAIT_POLICY=ACTIVE`).

The busy processes are, by default, other torch jobs (matrix products on torch's default threads)
in sessions of their own, as when two people train on one machine; `--competitor python` makes them
plain Python loops, `--same-session` starts them in this script's session.
Each run is `visionloom retrieval train phase3` in a fresh process; its speed is read from the
run's own log (seconds between two logged steps after the warm-up), so start-up and data loading
are left out. Prints the slowdown against the idle run of the same policy.
Goal (2 cores): at most 2.5x beside one competitor and 3.5x beside two.

    .venv/bin/python benchmarks/under_load.py
    .venv/bin/python benchmarks/under_load.py --steps 40 --results FILE
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visionloom.results import write_results  # first: it reads the load average at start

# The processes beside the run: another torch job (matrix products on torch's default threads,
# which spin while they wait, as a second training run does), or a plain Python loop (one core).
COMPETITORS = {
    "torch": "import torch\na = torch.randn(384, 384)\nwhile True:\n    a @ a\n",
    "python": "while True:\n    pass\n",
}
WARM_UP = 5  # steps left out of the timing


# Thread policies: what the run's environment sets. visionloom's own (the count follows the load);
# all cores fixed, as visionloom chooses the wait policy; all cores fixed, spinning while waiting.
POLICIES = {
    "follows the load": {},
    "fixed, all cores": {"OMP_NUM_THREADS": str(os.cpu_count())},
    "fixed, all cores, spinning": {"OMP_NUM_THREADS": str(os.cpu_count()), "OMP_WAIT_POLICY": "ACTIVE"},
}


def train_seconds(data: Path, out: Path, steps: int, policy: dict[str, str]) -> tuple[float, str]:
    """Seconds per step after the warm-up, and the thread changes the run logged."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    env.update(policy)
    command = [
        sys.executable, "-m", "visionloom.cli", "retrieval", "train", "phase3", "--data", str(data),
        "--out", str(out), "--set", f"train.steps={steps}", "--set", "train.log_every=1",
        "--set", f"train.checkpoint_every={steps}", "--set", f"train.eval_every={steps}",
        "--set", "train.log_with=[]",
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, capture_output=True)
    with open(out / "train_log.csv") as handle:
        seconds = {int(row["step"]): float(row["seconds"]) for row in csv.DictReader(handle) if row["loss"]}
    changes = [
        line.split(" ", 2)[2] for line in (out / "train.log").read_text().splitlines() if "threads:" in line
    ]
    return (seconds[steps] - seconds[WARM_UP]) / (steps - WARM_UP), "; ".join(changes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (default: 40)")
    parser.add_argument(
        "--ids", type=int, default=120, help="identities of the synthetic data (default: 120)"
    )
    parser.add_argument(
        "--competitor", choices=sorted(COMPETITORS), default="torch",
        help="what the busy processes run: another torch job (default) or a Python loop",
    )  # fmt: skip
    parser.add_argument(
        "--same-session", action="store_true",
        help="start the busy processes in the script's own login session (one person's jobs from one shell); by "
        "default each has its own, as other people's jobs do (Linux shares the CPU between sessions first)",
    )  # fmt: skip
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="under-load-") as work:
        work = Path(work)
        data = work / "data"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "visionloom.cli",
                "data",
                "synth-pedes",
                str(data),
                "--ids",
                str(args.ids),
            ],
            check=True,
            capture_output=True,
        )
        for number, (policy, settings) in enumerate(POLICIES.items()):
            row = {}
            for competitors in (0, 1, 2):
                busy = [
                    subprocess.Popen(
                        [sys.executable, "-c", COMPETITORS[args.competitor]], start_new_session=True
                    )
                    for _ in range(competitors)
                ]
                try:
                    time.sleep(3.0 if competitors else 0.0)  # let them start and take their share first
                    out = work / f"run-{number}-{competitors}"
                    seconds, changes = train_seconds(data, out, args.steps, settings)
                finally:
                    for process in busy:
                        process.kill()
                        process.wait()
                row[competitors] = {"seconds_per_step": seconds, "thread_changes": changes}
                slowdown = seconds / row[0]["seconds_per_step"]
                row[competitors]["slowdown"] = slowdown
                print(
                    f"{policy}: beside {competitors} busy {args.competitor} process(es): {seconds * 1000:.0f} ms per step, "
                    f"slowdown {slowdown:.2f}x" + (f" ({changes})" if changes else ""),
                    flush=True,
                )
            figures[policy] = row
    if args.results:
        setting = {"competitor": args.competitor, "same_session": args.same_session}
        write_results(args.results, "under_load", {**setting, **figures}, seeds=[0])


if __name__ == "__main__":
    main()
