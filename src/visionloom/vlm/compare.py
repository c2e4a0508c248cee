"""`visionloom vlm compare`: pretrain each scene VLM with several seeds and report the spread.

Seed k pretrains with `seed` (the weights) = `train.seed` (the batches) = k into OUT/<entry>/seed<k>
(a checkpoint directory, `vlm pretrain`'s OUT); a seed already finished with the same settings is
read back, one with a checkpoint resumes, so a comparison too long for one sitting continues where
it stopped. Per entry: each seed's held-out accuracy (all, where-questions, the scene questions,
captions), the mean and sample std, and each seed's validation where-accuracy by step (a run that
learns location and one that never does look different from the first checks).

    OUT/compare.json, OUT/results.json   per seed and summary;  OUT/compare.md the table
    OUT/compare.png   validation where-accuracy against step, one line per seed
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from visionloom.backbones import load
from visionloom.data.scenes import read_scene_folder, read_scene_texts
from visionloom.engine import compare
from visionloom.engine import run as engine_run
from visionloom.engine.compare import Entry, mean_std_text
from visionloom.results import write_results
from visionloom.vlm.config import PretrainConfig, load_config
from visionloom.vlm.evaluate import answer_accuracy
from visionloom.vlm.train import pretrain

TASKS = ("all", "where", "qa", "caption")
# What a seed reads from its image tokens: colour and shape of a named object, and where it is.
KINDS = ("qa:what-color", "qa:what-shape", "qa:where")


def pretrain_or_continue(
    config: PretrainConfig, data_root: Path, out: Path, progress: bool, say: Callable[[str], None]
) -> dict:
    """`vlm pretrain` into `out`, or its report when `out` finished with the same settings."""
    return engine_run.train_or_continue(
        out / "run",
        config,
        lambda **how: pretrain(data_root, out, config, progress=progress, **how),
        out / "pretrain.json",
        replaces=out,
        say=say,
    )


def validation_curve(run_dir: Path, task: str = "where") -> list[list[float]]:
    """[[step, validation accuracy of `task`], ...] from RUN/train_log.csv."""
    with open(run_dir / "train_log.csv", newline="") as handle:
        return [
            [int(row["step"]), float(row[f"val_{task}"])]
            for row in csv.DictReader(handle)
            if row.get(f"val_{task}")
        ]


def run_comparison(
    entries: list[Entry],
    data_root: str | Path,
    out: str | Path,
    *,
    seeds: int = 3,
    common_overrides: list[str] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """Pretrain every entry (a config under configs/vlm: a family, or a YAML path) with seeds
    0 .. seeds-1, then the report files in `out`."""
    seed_values = compare.check_seeds(seeds)
    data_root, out = Path(data_root), Path(out)
    configs = {
        (entry.name, seed): load_config(
            entry.config, [*(common_overrides or []), *entry.overrides, f"seed={seed}", f"train.seed={seed}"]
        )
        for entry in entries
        for seed in seed_values
    }
    read_scene_folder(data_root)  # a folder that cannot be read is named before any folder is made
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for entry in entries:
        runs = []
        for seed in seed_values:
            checkpoint = out / entry.folder / f"seed{seed}"
            say(f"{entry.name}, seed {seed} -> {checkpoint}")
            report = pretrain_or_continue(configs[entry.name, seed], data_root, checkpoint, progress, say)
            accuracy = report["test_accuracy"]
            if not all(kind in accuracy for kind in KINDS):  # a run from before the kinds were kept
                accuracy = answer_accuracy(
                    load(checkpoint), read_scene_texts(data_root, "test"), by_kind=True
                )
            runs.append(
                {
                    "seed": seed,
                    "checkpoint": str(checkpoint),
                    "steps": report["steps"],
                    "seconds": report["train_seconds"],
                    "selected_step": (report.get("selected") or {}).get("step"),
                    **{task: accuracy.get(task, float("nan")) for task in (*TASKS, *KINDS)},
                    "val_where_by_step": validation_curve(checkpoint / "run"),
                }
            )
        results[entry.name] = {
            "config": entry.config,
            "overrides": entry.overrides,
            "per_seed": runs,
            "summary": compare.summarise(runs, (*TASKS, *KINDS)),
        }
    report = {"data": str(data_root.resolve()), "seeds": list(seed_values), "entries": results}
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    write_results(
        out / "results.json",
        "vlm_compare",
        report,
        seeds=list(seed_values),
        config={"entries": [[e.config, e.overrides] for e in entries], "common": common_overrides or []},
    )
    write_table(report, out / "compare.md")
    plot_curves(report, out / "compare.png")
    return report


def write_table(report: dict, path: Path) -> None:
    lines = [
        "Held-out answer accuracy (%), exact match, per seed and mean ± sample std over seeds.",
        "",
        "| VLM | seed | " + " | ".join((*TASKS, *KINDS)) + " | selected step | train s |",
        "|---|---|" + "---|" * (len(TASKS) + len(KINDS) + 2),
    ]
    for name, result in report["entries"].items():
        for run in result["per_seed"]:
            cells = [f"{run[task]:.1f}" for task in (*TASKS, *KINDS)]
            lines.append(
                f"| {name} | {run['seed']} | "
                + " | ".join(cells)
                + f" | {run['selected_step']} | {run['seconds']:.0f} |"
            )
        cells = [mean_std_text(result["summary"][task]) for task in (*TASKS, *KINDS)]
        lines.append(f"| **{name}** | mean ± std | " + " | ".join(cells) + " | | |")
    path.write_text("\n".join(lines) + "\n")


def plot_curves(report: dict, path: Path) -> Path:
    """Validation where-accuracy against step: one panel per entry, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["entries"])
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for run in report["entries"][name]["per_seed"]:
            curve = run["val_where_by_step"]
            axis.plot(
                [step for step, _ in curve], [value for _, value in curve], "o-", label=f"seed {run['seed']}"
            )
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.set_ylabel("validation where-accuracy (%)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
