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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from visionloom.data.pedes import read_pedes
from visionloom.results import write_results
from visionloom.retrieval.config import load_config
from visionloom.retrieval.train import ensure_tokenizers, load_outcomes, train_or_continue

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
DEFAULT_RESAMPLES = 10_000
# Resamples drawn per [chunk, Q] index matrix: bounded memory for any number of queries.
RESAMPLE_CHUNK_ELEMENTS = 2**24


@dataclass
class Entry:
    """One configuration of the comparison: a named config with its overrides."""

    name: str  # how tables and folders call it, e.g. "phase4" or "phase4 loss.gen_weight=0.1"
    config: str  # a config name or YAML path
    overrides: list[str] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return "".join(c if c.isalnum() or c in "-._" else "_" for c in self.name.replace(" ", "__"))


def parse_sweep(sweep: str) -> tuple[str, list[str]]:
    """ "loss.gen_weight=0,0.1,0.5" -> ("loss.gen_weight", ["0", "0.1", "0.5"])."""
    key, _, values = sweep.partition("=")
    choices = [value.strip() for value in values.split(",") if value.strip()]
    if not key or not choices:
        raise ValueError(f"--sweep {sweep!r}: expected KEY=V1,V2,..., e.g. loss.gen_weight=0,0.1,0.5")
    return key.strip(), choices


def _entry_name(config: str) -> str:
    return Path(config).stem if config.endswith((".yaml", ".yml")) else config


def make_entries(configs: list[str], sweep: str | None = None, reference: str | None = None) -> list[Entry]:
    """One entry per config, or, with a sweep, one per (config, value); a `reference` config
    (not swept) comes first, so by default every other entry is compared with it."""
    if not configs:
        raise ValueError("name at least one config to compare, e.g. phase3 phase4")
    if sweep is None:
        entries = [Entry(_entry_name(name), name) for name in configs]
    else:
        key, values = parse_sweep(sweep)
        entries = [
            Entry(
                f"{_entry_name(name)} {key}={value}",
                name,
                [f"{key}={value}"],
            )
            for name in configs
            for value in values
        ]
    if reference is not None:
        entries.insert(0, Entry(_entry_name(reference), reference))
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"the entries must differ: {', '.join(names)}")
    return entries


def parse_pairs(pairs: list[str], entries: list[Entry]) -> list[tuple[str, str]]:
    """ "A,B" means A minus B. With none given: every entry against the first."""
    names = [entry.name for entry in entries]
    if not pairs:
        return [(name, names[0]) for name in names[1:]]
    parsed = []
    for pair in pairs:
        first, _, second = pair.partition(",")
        first, second = first.strip(), second.strip()
        unknown = [name for name in (first, second) if name not in names]
        if not second or unknown:
            raise ValueError(
                f"--pair {pair!r}: expected A,B with A and B among the entries: {'; '.join(names)}"
            )
        parsed.append((first, second))
    return parsed


# ------------------------------------------------------------------------------------ statistics
def paired_bootstrap(
    differences: torch.Tensor,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    groups: torch.Tensor | None = None,
) -> tuple[float, float]:
    """The percentile interval of the mean of `differences` [Q] over `resamples` bootstrap draws
    (torch's generator seeded with `seed`, drawn in order, chunk by chunk).

    Without `groups` the Q values are drawn with replacement. With `groups` [Q] (each query's
    identity) whole groups are drawn instead, and each draw's mean is over all the queries of the
    groups drawn: a cluster bootstrap, for queries that are not independent within a group.
    """
    values = differences.double().flatten()
    if len(values) == 0:
        raise ValueError("a bootstrap needs at least one query")
    if groups is None:
        sums, counts = values, torch.ones_like(values)
    else:
        _, member = torch.unique(groups.flatten(), return_inverse=True)  # [Q] -> 0..G-1
        sums = torch.zeros(int(member.max()) + 1, dtype=torch.float64).index_add_(0, member, values)
        counts = torch.bincount(member).double()
    units = len(sums)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, RESAMPLE_CHUNK_ELEMENTS // units)
    means = []
    for start in range(0, resamples, chunk):
        draws = torch.randint(
            units, (min(chunk, resamples - start), units), generator=generator
        )  # [c, units]
        means.append(sums[draws].sum(1) / counts[draws].sum(1))
    means = torch.cat(means)  # [resamples]
    tail = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return low, high


def summarise(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "std"}} over seeds; std is the sample standard deviation (0 for one seed)."""
    return {
        metric: {
            "mean": statistics.fmean(run[metric] for run in per_seed),
            "std": statistics.stdev([run[metric] for run in per_seed]) if len(per_seed) > 1 else 0.0,
        }
        for metric in METRICS
    }


def compare_pair(
    hits_a: torch.Tensor,
    hits_b: torch.Tensor,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    query_pids: torch.Tensor | None = None,
) -> dict[str, object]:
    """A minus B in R@1 points from per-seed hits [seeds, Q] of each (same queries, same order);
    with `query_pids`, also the interval of a bootstrap over identities."""
    if hits_a.shape[1] != hits_b.shape[1]:
        raise ValueError(
            f"the two entries were evaluated on different queries ({hits_a.shape[1]} and {hits_b.shape[1]}); "
            "a paired comparison needs the same test split"
        )
    differences = 100.0 * (hits_a.double().mean(0) - hits_b.double().mean(0))  # [Q]
    low, high = paired_bootstrap(differences, resamples, seed)
    by_identity = (
        list(paired_bootstrap(differences, resamples, seed, groups=query_pids))
        if query_pids is not None
        else None
    )
    per_seed = [
        100.0 * float(a.mean() - b.mean()) for a, b in zip(hits_a.double(), hits_b.double(), strict=False)
    ]
    return {
        "difference": float(differences.mean()),
        "interval": [low, high],  # resampling queries
        "interval_by_identity": by_identity,  # resampling identities with all their queries
        "resamples": resamples,
        "per_seed_difference": per_seed,  # seed k of A against seed k of B
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
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: at least 1")
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
        cells = [f"{result['summary'][m]['mean']:.1f} ± {result['summary'][m]['std']:.1f}" for m in METRICS]
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
            seeds = ", ".join(f"{value:+.1f}" for value in pair["per_seed_difference"])
            lines.append(
                f"| {pair['a']} − {pair['b']} | {pair['difference']:+.1f} | {_interval(pair['interval'])} | "
                f"{_interval(pair['interval_by_identity'])} | {seeds} |"
            )
    (out / "compare.md").write_text("\n".join(lines) + "\n")


def _interval(interval: list[float] | None) -> str:
    return "n/a" if interval is None else f"[{interval[0]:+.1f}, {interval[1]:+.1f}]"


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
