"""`visionloom demo`: the retrieval system end to end on synthetic pedestrians, on a laptop's CPU.

It answers the seed's question at toy scale: does the generative task help? Phase 3 (the shared
encoder, no generator) and phase 4 (the same encoders plus the masked-image generator) train with
the same steps and several seeds each, on the same data and VQ codes, and the report gives
mean ± std and a paired bootstrap interval of the phase 4 − phase 3 R@1 difference
(`retrieval/compare.py`). The baseline trains once beside them as the reference row.

An interrupted demo continues where it stopped when run again with the same `--out`: the data,
the VQ tokenizer and finished runs are kept, and a run with a checkpoint resumes from it.

    runs/demo-YYYYmmdd-HHMMSS/
        table.md  results.json      the reference row, each phase's mean ± std, the difference and its interval
        compare/                    the comparison (`retrieval compare`): compare.md, .json, .png,
                                    per_seed.csv, and each run in <phase>/seed<k>/
        loss_curves.png             every loss and the validation R@1 against the step (seed 0 of each)
        search_<phase>.png          the top 10 for one test caption, correct identity in green
        data/                       the synthetic data set, its VQ tokenizer and code cache
        <reference>/                the reference run (config, checkpoints, logs, best weights)
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from visionloom.config import read_json
from visionloom.data.pedes import read_pedes
from visionloom.data.synth_pedes import MIN_IDENTITIES, generate, split_of
from visionloom.results import write_results
from visionloom.retrieval.build import ARCHITECTURES
from visionloom.retrieval.compare import METRICS, Entry, run_comparison
from visionloom.retrieval.config import load_config
from visionloom.retrieval.train import ensure_tokenizers, load_trained, train_or_continue

# The default: phase 4 against phase 3 (the first phase is what the others are compared with),
# 3 seeds each, and the baseline once as the reference row. 150 steps per run keeps the seven
# runs, the VQ fit and the evaluations inside the 5 minutes the demo may take on 2 idle CPU cores.
DEFAULT = {"phases": "phase3,phase4", "reference": "baseline", "ids": 300, "steps": 150, "seeds": 3}
# `demo --quick`: the pipeline end to end in under a minute on 2 cores: the reference alone. Phase 4
# is left out: its VQ fit and generative head take minutes at any size that learns (measured: 120
# steps of phase 4 on 60 identities took 88 s of training alone).
QUICK = {"phases": "", "reference": "baseline", "ids": 60, "steps": 200, "seeds": 1}


def parse_phases(phases: str) -> list[str]:
    """ "phase3,phase4" -> the names; "all" -> every architecture; "" -> none (the reference alone)."""
    names = list(ARCHITECTURES) if phases == "all" else [p.strip() for p in phases.split(",") if p.strip()]
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown:
        raise ValueError(
            f"unknown phase(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(ARCHITECTURES)} or all"
        )
    return names


DATA_RECORD = "demo_data.json"  # OUT/data/: what the demo drew there (identities, seed)


def fewest_identities(configs: list) -> int:
    """The smallest --ids whose training split holds a batch of every config (`data.ids_per_batch`
    identities), as `synth_pedes.split_of` divides identities."""
    needed = max(config.data.ids_per_batch for config in configs)
    identities = MIN_IDENTITIES
    while sum(split_of(i, identities) == "train" for i in range(identities)) < needed:
        identities += 1
    return identities


def prepare_data(data: Path, identities: int, seed: int, progress: bool) -> None:
    """Draw the data set into OUT/data, or keep the one a previous demo drew there with the same
    --ids and --seed; refuse anything else there (another draw, or a data set of the user's)."""
    wanted = {"identities": identities, "seed": seed}
    record = data / DATA_RECORD
    if record.is_file():
        drawn = read_json(record)
        if drawn != wanted:
            raise ValueError(
                f"{data} holds the demo's data of --ids {drawn.get('identities')} --seed {drawn.get('seed')}, "
                f"not --ids {identities} --seed {seed}; give another --out, or the same --ids and --seed"
            )
    elif data.exists() and any(data.iterdir()):
        raise ValueError(
            f"{data} holds files the demo did not draw; give another --out (the demo never trains on "
            "data it did not make, nor deletes it)"
        )
    else:
        data.mkdir(parents=True)
        record.write_text(json.dumps(wanted))  # first: a draw cut short is drawn again on the rerun
    if not (data / "reid_raw.json").is_file():  # written last by the draw
        generate(data, identities, seed=seed, progress=progress)


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


def draw_figures(runs: dict[str, Path], test_split, out: Path) -> None:
    """OUT/loss_curves.png, and OUT/search_<run>.png: each run's top 10 for one test caption."""
    from visionloom.retrieval.search import draw_grid, search

    plot_curves(runs, out / "loss_curves.png")
    query_image = test_split.images[0]
    query = query_image.captions[0]
    for name, run_dir in runs.items():
        hits = search(load_trained(run_dir), test_split, query, top=10)
        draw_grid(query, hits, out / f"search_{name}.png", true_pid=query_image.pid)


def check_identities(identities: int, configs: list) -> None:
    """Refuse --ids too few for one training batch of every config, naming the fewest that work."""
    if identities < fewest_identities(configs):
        raise ValueError(
            f"--ids {identities}: the training split would hold fewer identities than a batch takes "
            f"(data.ids_per_batch {max(c.data.ids_per_batch for c in configs)}); give --ids "
            f"{fewest_identities(configs)} or more"
        )


def run_demo(
    out: Path | None = None,
    phases: list[str] | None = None,
    reference: str | None = "baseline",
    seeds: int = 3,
    identities: int = 300,
    seed: int = 0,
    steps: int | None = DEFAULT["steps"],
    vq_steps: int = 200,
    console: Console | None = None,
    progress: bool = True,
) -> dict:
    """Data, VQ, the reference once, each phase with `seeds` seeds (train.seed = seed, seed + 1, ...),
    the comparison of each phase with the first, and the report folder."""
    console = console or Console()
    phases = list(DEFAULT["phases"].split(",")) if phases is None else phases
    if not phases and not reference:
        raise ValueError("the demo needs a reference or at least one phase")
    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    data = out / "data"
    started = time.perf_counter()

    length = [f"train.steps={steps}"] if steps else []
    check_identities(
        identities, [load_config(name, length) for name in [*([reference] if reference else []), *phases]]
    )

    console.rule(f"visionloom demo -> {out}")
    prepare_data(data, identities, seed, progress)
    dataset = read_pedes(data)
    console.print(
        f"data: {dataset.name} format, {dataset['train'].num_identities} train / {dataset['val'].num_identities} val / "
        f"{dataset['test'].num_identities} test identities, {len(dataset['test'].images)} test images"
    )
    say = lambda line: console.print(line, highlight=False)  # noqa: E731
    vq_fit = {"steps": vq_steps, "seed": seed}  # over each config's vq.fit

    reference_summary = None
    if reference:
        config = load_config(reference, [*length, f"train.seed={seed}"])
        ensure_tokenizers([config], data, fit_overrides=vq_fit, progress=progress, say=say)
        console.rule(f"reference: {reference} ({config.train.steps} steps, seed {seed})")
        reference_summary = train_or_continue(config, data, out / reference, progress=progress, say=say)

    comparison = None
    if phases:
        console.rule(f"{', '.join(phases)}: {seeds} seed(s) each")
        entries = [Entry(phase, phase) for phase in phases]
        comparison = run_comparison(
            entries,
            data,
            out / "compare",
            seeds=seeds,
            first_seed=seed,
            # the last weights are tested too where validation chose earlier ones: the evidence
            # on whether selecting on a small validation split helps (`selection_evidence`)
            common_overrides=[*length, "train.evaluate_last=true"],
            vq_fit_overrides=vq_fit,
            progress=progress,
            say=say,
        )

    test_split = dataset["test"]
    chance = chance_r1(test_split)
    total = time.perf_counter() - started
    lines = _report_lines(reference, reference_summary, comparison, chance, total)
    _print_table(console, reference, reference_summary, comparison, test_split, chance)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    results = {
        "reference": {reference: reference_summary} if reference else {},
        "comparison": comparison,
        "selection": selection_evidence(comparison),
        "chance_R1": chance,
        "seconds": total,
    }
    write_results(
        out / "results.json",
        "demo",
        results,
        seeds=list(range(seed, seed + seeds)),
        config={
            "phases": phases,
            "reference": reference,
            "identities": identities,
            "steps": steps,
            "vq_steps": vq_steps,
        },
    )
    runs = {reference: out / reference} if reference else {}
    runs |= {phase: out / "compare" / phase / f"seed{seed}" for phase in phases}
    draw_figures(runs, test_split, out)
    compared = ", compare/" if phases else ""
    console.print(f"report: {out}/table.md, loss_curves.png{compared}, search_*.png  ({total:.0f} s)")
    return {"out": str(out), **results}


def selection_evidence(comparison: dict | None) -> dict | None:
    """Over every seed of every phase: test R@1 of the weights selected on validation and of the
    last step's, and how far each one's validation R@1 was from its test R@1 (mean absolute gap).
    None without runs that tested both."""
    runs = [
        run
        for entry in (comparison or {}).get("entries", {}).values()
        for run in entry["per_seed"]
        if run.get("last_test_R1") is not None and run.get("last_val_R1") is not None
    ]
    if not runs:
        return None
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {
        "runs": len(runs),
        "earlier_step_selected": sum(run["selected_step"] != run["last_step"] for run in runs),
        "test_R1_selected": mean([run["R1"] for run in runs]),
        "test_R1_last": mean([run["last_test_R1"] for run in runs]),
        "gap_selected": mean([abs(run["val_R1"] - run["R1"]) for run in runs]),
        "gap_last": mean([abs(run["last_val_R1"] - run["last_test_R1"]) for run in runs]),
    }


def selection_line(evidence: dict) -> str:
    runs, earlier = evidence["runs"], evidence["earlier_step_selected"]
    if earlier == 0:
        # Validation chose the last step everywhere: one set of weights, nothing to tell apart.
        return (
            f"Selection: validation chose the last step in all {runs} runs, so the selected weights are "
            f"the last ones; their validation R@1 was {evidence['gap_selected']:.1f} points from test "
            "(mean over runs)."
        )
    gaps = evidence["gap_selected"], evidence["gap_last"]
    closer = (
        "neither"
        if gaps[0] == gaps[1]
        else "the selected weights' validation"
        if gaps[0] < gaps[1]
        else "the last weights' validation"
    )
    return (
        f"Selection: validation chose an earlier step than the last in {earlier} of {runs} runs; test "
        f"R@1 {evidence['test_R1_selected']:.1f} with the selected weights, {evidence['test_R1_last']:.1f} "
        f"with the last (mean over runs); validation R@1 was {gaps[0]:.1f} points from test for the "
        f"selected weights and {gaps[1]:.1f} for the last ({closer} is the closer estimate)."
    )


def _report_lines(reference, reference_summary, comparison, chance: float, total: float) -> list[str]:
    lines = [
        "| run | seeds | " + " | ".join(METRICS) + " | train s (each) |",
        "|---|---|" + "---|" * (len(METRICS) + 1),
    ]
    if reference_summary is not None:
        cells = [f"{reference_summary['test'][m]:.1f}" for m in METRICS]
        lines.append(
            f"| {reference} (reference) | 1 | "
            + " | ".join(cells)
            + f" | {reference_summary['train_seconds']:.0f} |"
        )
    if comparison is not None:
        for name, entry in comparison["entries"].items():
            summary = entry["summary"]
            cells = [f"{summary[m]['mean']:.1f} ± {summary[m]['std']:.1f}" for m in METRICS]
            seconds = sum(run["seconds"] for run in entry["per_seed"]) / len(entry["per_seed"])
            lines.append(
                f"| {name} | {len(entry['per_seed'])} | " + " | ".join(cells) + f" | {seconds:.0f} |"
            )
        for pair in comparison["pairs"]:
            per_seed = ", ".join(f"{value:+.1f}" for value in pair["per_seed_difference"])
            lines += ["", f"{_difference(pair)}; per seed {per_seed}."]
    evidence = selection_evidence(comparison)
    if evidence is not None:
        lines += ["", selection_line(evidence)]
    lines += [
        "",
        f"Chance R@1: {chance:.1f}%. Mean ± sample std over seeds. Weights selected on the validation "
        "split; test evaluated once per run.",
        f"Time of this invocation of the demo: {total:.0f} s (runs finished earlier are read back).",
    ]
    return lines


def _difference(pair: dict) -> str:
    """The pair's R@1 difference with its two 95% paired bootstrap intervals, in words."""
    low, high = pair["interval"]
    line = (
        f"{pair['a']} − {pair['b']}: R@1 {pair['difference']:+.1f} points, 95% paired bootstrap interval "
        f"[{low:+.1f}, {high:+.1f}] resampling test queries"
    )
    if pair.get("interval_by_identity"):
        low, high = pair["interval_by_identity"]
        line += f", [{low:+.1f}, {high:+.1f}] resampling identities"
    return line


def _print_table(
    console: Console, reference, reference_summary, comparison, test_split, chance: float
) -> None:
    table = Table(
        title=f"test split: {len(test_split.images)} images, {len(test_split.queries()[0])} queries "
        f"(chance R@1 {chance:.1f}%)"
    )
    for column in ("run", "seeds", *METRICS):
        table.add_column(column, justify="left" if column == "run" else "right")
    if reference_summary is not None:
        table.add_row(
            f"{reference} (reference)", "1", *(f"{reference_summary['test'][m]:.1f}" for m in METRICS)
        )
    if comparison is not None:
        for name, entry in comparison["entries"].items():
            summary = entry["summary"]
            table.add_row(
                name,
                str(len(entry["per_seed"])),
                *(f"{summary[m]['mean']:.1f} ± {summary[m]['std']:.1f}" for m in METRICS),
            )
    console.print(table)
    if comparison is not None:
        for pair in comparison["pairs"]:
            console.print(_difference(pair), highlight=False)
