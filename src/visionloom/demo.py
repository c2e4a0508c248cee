"""`visionloom demo`: the retrieval system end to end on synthetic pedestrians, on a laptop's CPU.

Generates a data set, fits and caches the VQ tokenizer (when a phase needs it), trains each phase
at tiny size (selecting weights on val), evaluates test once, and writes a report folder:

An interrupted demo continues where it stopped when run again with the same `--out`: the data,
the VQ tokenizer and finished phases are kept, and a phase with a checkpoint resumes from it.

    runs/demo-YYYYmmdd-HHMMSS/
        table.md  results.json      R@1/5/10, mAP, mINP on test, train time, selected step per phase
        loss_curves.png             every loss and the validation R@1 against the step, per phase
        search_<phase>.png          the top 10 for one test caption, correct identity in green
        data/                       the synthetic data set, its VQ tokenizer and code cache
        <phase>/                    each phase's run directory (config, checkpoints, logs, best weights)
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from visionloom.data.pedes import read_pedes
from visionloom.data.synth_pedes import generate
from visionloom.engine.checkpoint import latest_checkpoint
from visionloom.retrieval.build import ARCHITECTURES, load_config
from visionloom.retrieval.train import load_trained, needs_vq, train_retrieval

DEFAULT_PHASES = ("baseline", "phase4")
# `demo --quick`: the pipeline end to end in under a minute on 2 cores. Phase 4 is left out: its
# VQ fit and generative head take minutes at any size that learns (measured: 120 steps of phase 4
# on 60 identities took 88 s of training alone).
QUICK = {"phases": "baseline", "ids": 60, "steps": 200}
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def parse_phases(phases: str) -> list[str]:
    names = list(ARCHITECTURES) if phases == "all" else [p.strip() for p in phases.split(",") if p.strip()]
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown or not names:
        raise ValueError(
            f"unknown phase(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(ARCHITECTURES)} or all"
        )
    return names


def chance_r1(split) -> float:
    """R@1 of a random ranking: the mean over queries of (images of its identity / gallery size)."""
    per_pid: dict[int, int] = {}
    for image in split.images:
        per_pid[image.pid] = per_pid.get(image.pid, 0) + 1
    _, pids = split.queries()
    return 100.0 * sum(per_pid[pid] for pid in pids) / (len(pids) * len(split.images))


def plot_curves(runs: dict[str, Path], out: Path, columns: int = 3) -> Path:
    """One panel per phase, laid out in a grid of at most `columns` per row. Each loss is drawn
    relative to its first logged value, so a loss of about 2 falls as visibly as one of about 25
    beside it (the legend gives each one's starting value); validation R@1 on its own axis."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns, len(runs))
    rows = math.ceil(len(runs) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    for axis in axes.flat[len(runs) :]:
        axis.set_visible(False)
    for axis, (phase, run_dir) in zip(axes.flat, runs.items(), strict=False):
        with open(run_dir / "train_log.csv") as handle:
            rows_logged = list(csv.DictReader(handle))
        train_rows = [row for row in rows_logged if row.get("loss")]
        keys = ["loss"] + [key for key in train_rows[0] if key.endswith("_loss")]
        steps = [int(row["step"]) for row in train_rows]
        for key in keys:
            values = [float(row[key]) for row in train_rows]
            start = values[0] if values[0] != 0 else 1.0
            axis.plot(steps, [value / start for value in values], label=f"{key} (from {values[0]:.3g})")
        axis.set_title(phase)
        axis.set_xlabel("step")
        axis.set_ylabel("loss / its first value")
        handles, labels = axis.get_legend_handles_labels()
        val_rows = [row for row in rows_logged if row.get("val_R1")]
        if val_rows:
            twin = axis.twinx()
            twin.plot(
                [int(r["step"]) for r in val_rows],
                [float(r["val_R1"]) for r in val_rows],
                "ko--",
                label="val R@1",
            )
            twin.set_ylabel("val R@1 (%)")
            twin_handles, twin_labels = twin.get_legend_handles_labels()
            handles, labels = handles + twin_handles, labels + twin_labels
        axis.legend(handles, labels, fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _run_phase(config, data: Path, run_dir: Path, progress: bool, console: Console) -> dict:
    """A phase of the demo, continuing what an interrupted demo left in `run_dir`: a finished phase
    is read back, one with a checkpoint is resumed, one stopped before its first is started over."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        if done.get("steps") == config.train.steps:
            console.print(f"{run_dir.name}: finished in an earlier run ({summary})")
            return done
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is not None:
        console.print(f"{run_dir.name}: continuing from {checkpoint}")
        return train_retrieval(config, data, run_dir, resume=True, progress=progress)
    return train_retrieval(config, data, run_dir, overwrite=run_dir.exists(), progress=progress)


def run_demo(
    out: Path | None = None,
    phases: list[str] | None = None,
    identities: int = 300,
    seed: int = 0,
    steps: int | None = None,
    vq_steps: int = 200,
    console: Console | None = None,
    progress: bool = True,
) -> dict:
    console = console or Console()
    phases = phases or list(DEFAULT_PHASES)
    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    data = out / "data"
    started = time.perf_counter()

    console.rule(f"visionloom demo -> {out}")
    if not (data / "reid_raw.json").is_file():
        generate(data, identities, seed=seed, progress=progress)
    dataset = read_pedes(data)
    console.print(
        f"data: {dataset.name} format, {dataset['train'].num_identities} train / {dataset['val'].num_identities} val / "
        f"{dataset['test'].num_identities} test identities, {len(dataset['test'].images)} test images"
    )
    configs = {}
    for phase in phases:
        overrides = [f"train.seed={seed}"] + ([f"train.steps={steps}"] if steps else [])
        configs[phase] = load_config(phase, overrides)
    if any(needs_vq(config) for config in configs.values()):
        from visionloom.retrieval.build import VQFitConfig
        from visionloom.retrieval.vq import build_cache, fit_vq

        vq_dir = data / "vq"
        if not (vq_dir / "config.json").is_file():
            fit_started = time.perf_counter()
            report = fit_vq(
                dataset["train"], vq_dir, VQFitConfig(steps=vq_steps, seed=seed), progress=progress
            )
            console.print(f"VQ tokenizer: {report} ({time.perf_counter() - fit_started:.0f} s)")
        cache = build_cache(data, dataset["train"], vq_dir, progress=progress)
        console.print(f"VQ code cache: {cache}")

    results: dict[str, dict] = {}
    for phase, config in configs.items():
        console.rule(f"{phase} ({config.train.steps} steps)")
        results[phase] = _run_phase(config, data, out / phase, progress, console)

    test_split = dataset["test"]
    chance = chance_r1(test_split)
    table = Table(
        title=f"test split: {len(test_split.images)} images, {len(test_split.queries()[0])} queries "
        f"(chance R@1 {chance:.1f}%)"
    )
    for column in ("phase", *METRICS, "train s", "selected step (val R@1)"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    lines = [
        "| phase | R@1 | R@5 | R@10 | mAP | mINP | train s | selected at step (val R@1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase, summary in results.items():
        test, selected = summary["test"], summary["selected"]
        cells = [f"{test[m]:.1f}" for m in METRICS]
        choice = f"{selected['step']} ({selected['R1']:.1f})"
        table.add_row(phase, *cells, f"{summary['train_seconds']:.0f}", choice)
        lines.append(f"| {phase} | " + " | ".join(cells) + f" | {summary['train_seconds']:.0f} | {choice} |")
    console.print(table)
    total = time.perf_counter() - started
    lines += [
        "",
        f"Chance R@1: {chance:.1f}%. Weights selected on the validation split; test evaluated once.",
        f"Total demo time: {total:.0f} s.",
    ]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(
        json.dumps({"phases": results, "chance_R1": chance, "seconds": total}, indent=1)
    )
    plot_curves({phase: out / phase for phase in results}, out / "loss_curves.png")

    from visionloom.retrieval.search import draw_grid, search

    query_image = test_split.images[0]
    query = query_image.captions[0]
    for phase in results:
        hits = search(load_trained(out / phase), test_split, query, top=10)
        draw_grid(query, hits, out / f"search_{phase}.png", true_pid=query_image.pid)
    console.print(f"report: {out}/table.md, loss_curves.png, search_*.png  ({total:.0f} s)")
    return {"out": str(out), "results": results, "chance_R1": chance, "seconds": total}
