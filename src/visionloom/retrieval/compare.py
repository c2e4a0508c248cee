"""`visionloom retrieval compare`: several configs, several seeds each, on one data set; the numbers
that say whether a difference between two of them is real.

Each (config, seed) trains through `train_or_continue` into OUT/<entry>/seed<k> (so an interrupted
comparison continues where it stopped) and is evaluated once on test, which also writes each test
query's own result. Then, per entry, the mean and sample standard deviation over seeds of every
metric; and, per pair (A, B), the R@1 difference over the same queries with two paired bootstrap
intervals:

    d_q = mean over A's seeds of hit_q  -  mean over B's seeds of hit_q      (each query q, in %)
    difference = mean_q d_q;  interval = the 2.5 and 97.5 percentiles of mean_q d_q over
    `resamples` draws of the Q queries with replacement, and the same drawing whole identities
    (each with all its queries: queries of one identity are not independent)

The intervals cover what the choice of test set adds to the difference of these trained models;
the spread over seeds (training noise) shows in the per-seed differences beside them.

    OUT/compare.json   every entry's per-seed metrics, mean and std; every pair's difference and interval
    OUT/compare.md     the same as tables;  OUT/per_seed.csv  one row per (entry, seed)
    OUT/compare.png    R@1 and mAP per entry (mean, std, each seed) and each pair's interval
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from visionloom.data.pedes import read_pedes
from visionloom.engine import compare
from visionloom.engine.compare import (  # noqa: F401  (the comparison's names, as callers import them)
    DEFAULT_RESAMPLES,
    Entry,
    interval_text,
    make_entries,
    mean_std_text,
    paired_bootstrap,
    parse_pairs,
    parse_sweep,
    points_text,
)
from visionloom.results import write_results
from visionloom.retrieval.config import load_config
from visionloom.retrieval.train import ensure_tokenizers, load_outcomes, train_or_continue

METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def summarise(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "std"}} of every retrieval metric over seeds."""
    return compare.summarise(per_seed, METRICS)


def compare_pair(
    hits_a: torch.Tensor,
    hits_b: torch.Tensor,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    query_pids: torch.Tensor | None = None,
) -> dict[str, object]:
    """A minus B in R@1 points from per-seed hits [seeds, Q] of each (same queries, same order);
    with `query_pids`, also the interval of a bootstrap over identities."""
    try:
        result = compare.compare_outcomes(hits_a, hits_b, resamples, seed, groups=query_pids)
    except ValueError as error:
        raise ValueError(str(error).replace("items", "queries")) from None
    by_identity = result.pop("interval_by_group")
    return {
        "difference": result["difference"],
        "interval": result["interval"],  # resampling queries
        "interval_by_identity": by_identity,  # resampling identities with all their queries
        "resamples": resamples,
        "per_seed_difference": result["per_seed_difference"],  # seed k of A against seed k of B
    }


def selection_check(run_dir: Path, summary: dict) -> dict[str, float | int | None]:
    """The last step's validation and test R@1 beside the selected weights' (`train.evaluate_last`):
    the evidence for selecting on validation or keeping the last weights. Empty without it."""
    if "last" in summary:
        last_step, last_test = summary["last"]["step"], summary["last"]["test"]["R1"]
    elif summary.get("selected") and summary["selected"]["step"] == summary["steps"]:
        last_step, last_test = summary["steps"], summary["test"]["R1"]  # validation chose the last step
    else:
        return {}
    with open(run_dir / "train_log.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_R1") and int(row["step"]) == last_step]
    return {
        "last_step": last_step,
        "last_val_R1": float(rows[-1]["val_R1"]) if rows else None,
        "last_test_R1": last_test,
    }


# ------------------------------------------------------------------------------------ the run
def run_comparison(
    entries: list[Entry],
    data_root: Path,
    out: Path,
    *,
    seeds: int = 3,
    first_seed: int = 0,
    pairs: list[tuple[str, str]] | None = None,
    common_overrides: list[str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    vq_fit_overrides: dict | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """Train and test every entry with train.seed = first_seed .. first_seed + seeds - 1 (the VQ
    tokenizers they need prepared first, `vq_fit_overrides` over their vq.fit), then the
    statistics and the report files."""
    compare.check_seeds(seeds)
    data_root, out = Path(data_root), Path(out)
    read_pedes(data_root)  # a data root that cannot be read is named before any folder is made
    out.mkdir(parents=True, exist_ok=True)
    pairs = pairs if pairs is not None else parse_pairs([], entries)
    seed_values = range(first_seed, first_seed + seeds)
    configs = {
        (entry.name, seed): load_config(
            entry.config, [*(common_overrides or []), *entry.overrides, f"train.seed={seed}"]
        )
        for entry in entries
        for seed in seed_values
    }
    ensure_tokenizers(
        list(configs.values()), data_root, fit_overrides=vq_fit_overrides, progress=progress, say=say
    )

    results: dict[str, dict] = {}
    for entry in entries:
        runs = []
        for seed in seed_values:
            run_dir = out / entry.folder / f"seed{seed}"
            say(f"{entry.name}, seed {seed} -> {run_dir}")
            summary = train_or_continue(
                configs[entry.name, seed], data_root, run_dir, progress=progress, say=say
            )
            selected = summary.get("selected") or {}
            runs.append(
                {
                    "seed": seed,
                    "run": str(run_dir),
                    "seconds": summary["train_seconds"],
                    # what selection saw: on a small validation split it can disagree with test
                    "selected_step": selected.get("step"),
                    "val_R1": selected.get("R1"),
                    **summary["test"],
                    **selection_check(run_dir, summary),
                }
            )
        results[entry.name] = {"config": entry.config, "overrides": entry.overrides, "per_seed": runs}
        results[entry.name]["summary"] = summarise(runs)

    outcomes = {
        entry.name: [load_outcomes(out / entry.folder / f"seed{seed}") for seed in seed_values]
        for entry in entries
    }
    hits = {name: torch.stack([run.hits(1) for run in runs]) for name, runs in outcomes.items()}
    query_pids = outcomes[entries[0].name][0].query_pids
    compared = [
        {"a": a, "b": b, **compare_pair(hits[a], hits[b], resamples, query_pids=query_pids)} for a, b in pairs
    ]
    report = {"data": str(data_root.resolve()), "seeds": seeds, "entries": results, "pairs": compared}
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    summary = {
        "entries": {
            name: {"summary": result["summary"], "per_seed": result["per_seed"]}
            for name, result in results.items()
        },
        "pairs": compared,
    }
    write_results(
        out / "results.json",
        "retrieval_compare",
        summary,
        seeds=list(seed_values),
        config={"entries": [[e.config, e.overrides] for e in entries], "common": common_overrides or []},
    )
    write_tables(report, out)
    plot_comparison(report, out / "compare.png")
    return report


def write_tables(report: dict, out: Path) -> None:
    """OUT/per_seed.csv and OUT/compare.md."""
    with open(out / "per_seed.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["entry", "seed", *METRICS, "selected_step", "val_R1", "train_seconds", "run"])
        for name, result in report["entries"].items():
            for run in result["per_seed"]:
                metrics = [round(run[m], 4) for m in METRICS]
                selection = [run["selected_step"], run["val_R1"]]
                writer.writerow([name, run["seed"], *metrics, *selection, run["seconds"], run["run"]])
    lines = [
        f"Test split, {report['seeds']} seed(s) per entry: mean ± sample std over seeds.",
        "",
        "| entry | " + " | ".join(METRICS) + " | train s (mean) |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    for name, result in report["entries"].items():
        cells = [mean_std_text(result["summary"][m]) for m in METRICS]
        seconds = statistics.fmean(run["seconds"] for run in result["per_seed"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    if report["pairs"]:
        lines += [
            "",
            "R@1 difference A − B over the same test queries, with 95% paired bootstrap intervals "
            "resampling queries and resampling identities (all of an identity's queries together); "
            "per seed: seed k of A against seed k of B.",
            "",
            "| A − B | R@1 difference | 95% interval, queries | 95% interval, identities | per seed |",
            "|---|---|---|---|---|",
        ]
        for pair in report["pairs"]:
            seeds = ", ".join(points_text(value) for value in pair["per_seed_difference"])
            lines.append(
                f"| {pair['a']} − {pair['b']} | {points_text(pair['difference'])} | {interval_text(pair['interval'])} | "
                f"{interval_text(pair['interval_by_identity'])} | {seeds} |"
            )
    (out / "compare.md").write_text("\n".join(lines) + "\n")


def plot_comparison(report: dict, path: Path) -> Path:
    """R@1 and mAP per entry (bar: mean, whisker: std, dots: seeds), and each pair's interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["entries"])
    pairs = report["pairs"]
    # metrics side by side on top; the differences below, as wide as the figure (long entry names)
    figure = plt.figure(
        figsize=(max(9.0, 1.6 * len(names) * 2), 4.2 + (1.0 + 0.6 * len(pairs) if pairs else 0))
    )
    grid = figure.add_gridspec(
        2 if pairs else 1, 2, height_ratios=[4.8, 1.0 + 0.6 * len(pairs)] if pairs else None
    )
    axes = [figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])]
    if pairs:
        axes.append(figure.add_subplot(grid[1, :]))
    for axis, metric in zip(axes, ("R1", "mAP"), strict=False):
        for index, name in enumerate(names):
            result = report["entries"][name]
            summary = result["summary"][metric]
            axis.bar(index, summary["mean"], yerr=summary["std"], color="#9ecae1", capsize=4)
            values = [run[metric] for run in result["per_seed"]]
            axis.plot([index] * len(values), values, "k.", markersize=6)
        axis.set_xticks(
            range(len(names)),
            [name.replace(" ", "\n") for name in names],
            rotation=25,
            ha="right",
            fontsize=8,
        )
        axis.set_ylabel(f"test {metric} (%)")
        axis.set_title(f"{metric}: mean ± std, dots = seeds")
    if pairs:
        axis = axes[-1]
        for index, pair in enumerate(report["pairs"]):
            middle = pair["difference"]
            intervals = [("queries", pair["interval"], 0.1, "black")]
            if pair.get("interval_by_identity"):
                intervals.append(("identities", pair["interval_by_identity"], -0.1, "#d62728"))
            for label, (low, high), offset, colour in intervals:
                axis.errorbar(
                    middle,
                    index + offset,
                    xerr=[[middle - low], [high - middle]],
                    fmt="o",
                    color=colour,
                    capsize=4,
                    label=f"resampling {label}" if index == 0 else None,
                )
        axis.legend(fontsize=7, loc="best")
        axis.axvline(0.0, color="grey", linestyle="--")
        axis.set_yticks(
            range(len(report["pairs"])), [f"{p['a']} − {p['b']}" for p in report["pairs"]], fontsize=8
        )
        axis.set_xlabel("R@1 difference A − B (points), 95% paired bootstrap intervals")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
