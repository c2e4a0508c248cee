"""CPU and wall seconds per VQ-fit step: OpenMP threads that spin while waiting, or sleep.

Starts --load busy processes (a shared machine), then fits the VQ tokenizer for --steps steps in a
fresh interpreter under each setting, and prints CPU seconds and wall seconds per step:

- spin:    all cores, OMP_WAIT_POLICY=ACTIVE (torch's default; visionloom's on an idle machine)
- passive: all cores, OMP_WAIT_POLICY=PASSIVE (visionloom's default on a busy machine)
- one:     a single thread

The last line is the headline: spin / passive in CPU seconds per step.

    .venv/bin/python benchmarks/threads.py               # load 2 (two busy processes)
    .venv/bin/python benchmarks/threads.py --load 0      # an idle machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visionloom.results import write_results  # first: it reads the load average at start

CHILD = """
import json, sys, time
from pathlib import Path
import torch
from visionloom.data.pedes import read_pedes
from visionloom.retrieval.config import VQFitConfig
from visionloom.retrieval.vq import fit_vq
root, steps = Path(sys.argv[1]), int(sys.argv[2])
split = read_pedes(root)["train"]
cpu, wall = time.process_time(), time.perf_counter()
fit_vq(split, root / f"vq-{time.time_ns()}", VQFitConfig(steps=steps, seed=0), progress=False)
print(json.dumps({"cpu": (time.process_time() - cpu) / steps, "wall": (time.perf_counter() - wall) / steps,
                  "threads": torch.get_num_threads()}))
"""


def measure(root: Path, steps: int, threads: int, policy: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=policy)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--load", type=int, default=2, help="busy processes running meanwhile (default: 2)")
    parser.add_argument("--steps", type=int, default=20, help="VQ-fit steps per setting (default: 20)")
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()
    from visionloom.data.synth_pedes import generate
    from visionloom.threads import physical_cores_available

    cores = physical_cores_available()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        time.sleep(1)
        with tempfile.TemporaryDirectory() as directory:
            root = Path(directory)
            generate(root, 20, seed=0, progress=False)
            results = {
                "spin": measure(root, args.steps, cores, "ACTIVE"),
                "passive": measure(root, args.steps, cores, "PASSIVE"),
                "one": measure(root, args.steps, 1, "PASSIVE"),
            }
    finally:
        for process in busy:
            process.kill()
    for name, result in results.items():
        print(
            f"{name:8s} {result['threads']} thread(s): {result['cpu']:.2f} CPU-s/step, "
            f"{result['wall']:.2f} wall-s/step (load {args.load} on {cores} cores)"
        )
    print(f"spin / passive, CPU seconds per step: {results['spin']['cpu'] / results['passive']['cpu']:.2f}")
    if args.results:
        figures = {
            **results,
            "load": args.load,
            "cores": cores,
            "steps": args.steps,
            "ratio": results["spin"]["cpu"] / results["passive"]["cpu"],
        }
        write_results(args.results, "threads", figures, seeds=[0])


if __name__ == "__main__":
    main()
