"""`visionloom ground compare`: grounding configs over several seeds, beside the baselines that use
neither image nor expression, and whether each difference is more than the test set's luck.

Each (config, seed) trains the head with `train.seed` and `sam.seed` = seed into
OUT/<entry>/seed<k> (a finished run with the same settings is read back, one with a checkpoint
resumes), and is tested once; `prior-box` and `prior-mask` (`grounding/baselines.py`) are entries
without seeds. Per entry, the mean and sample std over seeds of each metric; per pair (A, B), on
the same test expressions:

    cIoU   the difference of pooled cIoU (every seed's intersections over every seed's unions)
    mIoU   the mean over expressions of (A's IoU - B's IoU), each averaged over its seeds
    P@0.5  the same with IoU > 0.5

each with 95% paired bootstrap intervals (`engine.compare`) resampling expressions and resampling
images (all of an image's expressions together), for the coarse masks and, where both entries
have them, the refined ones.

    OUT/compare.json, OUT/results.json   entries, pairs, what each interval supports
    OUT/compare.md   the tables;  OUT/compare.png   cIoU and mIoU per entry, each pair's intervals
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from visionloom.engine import compare
from visionloom.engine import run as engine_run
from visionloom.engine.compare import DEFAULT_RESAMPLES, Entry, interval_text, mean_std_text, points_text
from visionloom.grounding.baselines import BASELINES, fit_priors, score_baselines
from visionloom.grounding.build import read_splits
from visionloom.grounding.config import GroundingConfig, load_config
from visionloom.grounding.features import sample_name
from visionloom.grounding.metrics import metrics_from_outcomes
from visionloom.grounding.train import SAMPLE_OUTCOMES, train_grounding
from visionloom.results import supported, write_results

METRICS = ("cIoU", "mIoU", "P@0.5")
MASKS = ("coarse", "refined")


def train_or_continue(
    config: GroundingConfig, data_root: Path, run_dir: Path, progress: bool, say: Callable[[str], None]
) -> dict:
    """Train `config` into `run_dir`, continuing what an interrupted run left there."""
    return engine_run.train_or_continue(
        run_dir,
        config,
        lambda **how: train_grounding(config, data_root, run_dir, progress=progress, **how),
        run_dir / "summary.json",
        also_finished=(run_dir / SAMPLE_OUTCOMES,),
        say=say,
    )


def _outcome_tensors(outcomes: list[dict], mask: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(intersection, union) long [seeds, Q] of one mask kind, or None when a seed lacks it."""
    if any(mask not in outcome for outcome in outcomes):
        return None
    return (
        torch.tensor([outcome[mask]["intersection"] for outcome in outcomes]),
        torch.tensor([outcome[mask]["union"] for outcome in outcomes]),
    )


def compare_masks(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    images: torch.Tensor,
    resamples: int,
) -> dict[str, dict]:
    """{metric: difference, intervals (expressions, images), per-seed differences} of A minus B
    from each one's (intersection, union) [seeds, Q]."""
    result = {}
    for metric in METRICS:
        if metric == "cIoU":
            pooled = [torch.stack([part.double().mean(0) for part in side]) for side in (a, b)]  # [2, Q] each
            numerators, denominators = (
                torch.stack([pooled[0][0], pooled[1][0]]),
                torch.stack([pooled[0][1], pooled[1][1]]),
            )
            difference = 100.0 * float(
                numerators[0].sum() / denominators[0].sum().clamp(min=1)
                - numerators[1].sum() / denominators[1].sum().clamp(min=1)
            )
            intervals = [
                [
                    100.0 * value
                    for value in compare.ratio_difference_bootstrap(
                        numerators, denominators, resamples, groups=groups
                    )
                ]
                for groups in (None, images)
            ]
            per_seed_a, per_seed_b = metrics_from_outcomes(*a)[:, 0], metrics_from_outcomes(*b)[:, 0]
            pairable = len(per_seed_a) == len(per_seed_b) or 1 in (len(per_seed_a), len(per_seed_b))
            entry = {
                "difference": difference,
                "interval": intervals[0],
                "interval_by_group": intervals[1],
                "per_seed_difference": (per_seed_a - per_seed_b).tolist() if pairable else [],
            }
        else:
            per_item = [_per_item(side, metric) for side in (a, b)]  # [seeds, Q] each
            entry = compare.compare_outcomes(per_item[0], per_item[1], resamples, groups=images, scale=100.0)
        result[metric] = entry
    return result


def _per_item(side: tuple[torch.Tensor, torch.Tensor], metric: str) -> torch.Tensor:
    intersection, union = (part.double() for part in side)
    ious = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    return ious if metric == "mIoU" else (ious > 0.5).double()


def run_comparison(
    entries: list[Entry],
    data_root: str | Path,
    out: str | Path,
    *,
    seeds: int = 3,
    split: str = "test",
    vlm: str | None = None,
    pairs: list[tuple[str, str]] | None = None,
    common_overrides: list[str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """Train and test every config entry with seeds 0 .. seeds-1 (`vlm` given to each whose config
    names none), score the baseline entries once, then the statistics and the report files."""
    seed_values = compare.check_seeds(seeds)
    data_root, out = Path(data_root), Path(out)
    configs: dict[tuple[str, int], GroundingConfig] = {}
    for entry in entries:
        if entry.config in BASELINES:
            continue
        for seed in seed_values:
            config = load_config(
                entry.config,
                [*(common_overrides or []), *entry.overrides, f"train.seed={seed}", f"sam.seed={seed}"],
            )
            if config.vlm is None:
                if vlm is None:
                    raise ValueError(f"{entry.name}: its config names no VLM; give --vlm DIR")
                config.vlm = vlm
            configs[entry.name, seed] = config
    reading = next(iter(configs.values()), GroundingConfig())
    splits = read_splits(reading, data_root)  # the data is named before any folder is made
    if split not in splits:
        raise ValueError(f"--split {split!r}: {data_root} has {', '.join(sorted(splits))}")
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    outcomes: dict[str, list[dict]] = {}
    for entry in entries:
        runs = []
        if entry.config in BASELINES:
            scored = score_baselines(fit_priors(splits["train"]), splits[split])[entry.config]
            outcomes[entry.name] = [
                {"samples": [sample_name(s) for s in splits[split]], "coarse": scored.outcomes()}
            ]
            runs.append({"seed": None, **{f"coarse_{k}": v for k, v in scored.result().items()}})
        else:
            outcomes[entry.name] = []
            for seed in seed_values:
                run_dir = out / entry.folder / f"seed{seed}"
                say(f"{entry.name}, seed {seed} -> {run_dir}")
                summary = train_or_continue(configs[entry.name, seed], data_root, run_dir, progress, say)
                if split not in summary:
                    raise ValueError(
                        f"{run_dir}: no {split!r} split was evaluated ({', '.join(summary['evaluated'])})"
                    )
                selected = summary.get("selected") or {}
                runs.append(
                    {
                        "seed": seed,
                        "run": str(run_dir),
                        "seconds": summary["train_seconds"],
                        "selected_step": selected.get("step"),
                        **summary[split],
                    }
                )
                outcomes[entry.name].append(json.loads((run_dir / SAMPLE_OUTCOMES).read_text())[split])
        metrics = [f"{mask}_{m}" for mask in MASKS for m in METRICS if f"{mask}_{m}" in runs[0]]
        results[entry.name] = {
            "config": entry.config,
            "overrides": entry.overrides,
            "per_seed": runs,
            "summary": compare.summarise(runs, metrics),
        }

    samples = outcomes[entries[0].name][0]["samples"]
    for name, per_seed in outcomes.items():
        if any(outcome["samples"] != samples for outcome in per_seed):
            raise ValueError(
                f"{name}: scored other expressions than {entries[0].name}; a paired comparison needs the same"
            )
    image_names = [key.split(" ref ", 1)[0] for key in samples]
    images = torch.tensor([sorted(set(image_names)).index(name) for name in image_names])  # [Q]
    compared = []
    for a, b in pairs if pairs is not None else compare.parse_pairs([], entries):
        pair: dict = {"a": a, "b": b}
        for mask in MASKS:
            sides = [_outcome_tensors(outcomes[name], mask) for name in (a, b)]
            if None in sides:
                continue
            pair[mask] = compare_masks(sides[0], sides[1], images, resamples)
            for found in pair[mask].values():
                found["supports"] = supported({"a": a, "b": b, **found}, "interval_by_group")
        compared.append(pair)

    report = {
        "data": str(data_root.resolve()),
        "split": split,
        "expressions": len(samples),
        "images": len(set(image_names)),
        "seeds": list(seed_values),
        "entries": results,
        "pairs": compared,
        "resamples": resamples,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    write_results(
        out / "results.json",
        "ground_compare",
        compare.filed_form(report),
        seeds=list(seed_values),
        config={
            "entries": [[e.config, e.overrides] for e in entries],
            "common": common_overrides or [],
            "vlm": vlm,
        },
    )
    write_tables(report, out / "compare.md")
    plot_comparison(report, out / "compare.png")
    return report


def write_tables(report: dict, path: Path) -> None:
    columns = [f"{mask}_{m}" for mask in MASKS for m in METRICS]
    lines = [
        f"Split {report['split']}: {report['expressions']} expressions about {report['images']} images; "
        f"mean ± sample std over seeds {report['seeds']} (baselines: one fit, no seed).",
        "",
        "| entry | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, result in report["entries"].items():
        cells = [mean_std_text(result["summary"][c]) if c in result["summary"] else "–" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report["pairs"]:
        lines += [
            "",
            "Differences A − B in points over the same expressions, with 95% paired bootstrap intervals "
            "resampling expressions and resampling images; what the image interval supports.",
            "",
            "| A − B | mask | metric | difference | 95% interval, expressions | 95% interval, images | supports |",
            "|---|---|---|---|---|---|---|",
        ]
        for pair in report["pairs"]:
            for mask in MASKS:
                for metric, found in pair.get(mask, {}).items():
                    lines.append(
                        f"| {pair['a']} − {pair['b']} | {mask} | {metric} | {points_text(found['difference'])} | "
                        f"{interval_text(found['interval'])} | {interval_text(found['interval_by_group'])} | "
                        f"{found['supports']} |"
                    )
    path.write_text("\n".join(lines) + "\n")


def plot_comparison(report: dict, path: Path) -> Path:
    """Coarse cIoU and mIoU per entry (bar: mean, whisker: std, dots: seeds), and each pair's
    coarse cIoU interval (black: expressions, red: images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["entries"])
    pairs = [pair for pair in report["pairs"] if "coarse" in pair]
    figure, axes = plt.subplots(1, 3 if pairs else 2, figsize=(15 if pairs else 10, 4.2))
    for axis, metric in zip(axes, ("coarse_cIoU", "coarse_mIoU"), strict=False):
        for index, name in enumerate(names):
            result = report["entries"][name]
            summary = result["summary"][metric]
            axis.bar(index, summary["mean"], yerr=summary["std"], color="#9ecae1", capsize=4)
            values = [run[metric] for run in result["per_seed"]]
            axis.plot([index] * len(values), values, "k.", markersize=6)
        axis.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        axis.set_ylabel(f"{report['split']} {metric.replace('_', ' ')} (%)")
        axis.set_title(f"{metric.replace('_', ' ')}: mean ± std, dots = seeds")
    if pairs:
        axis = axes[2]
        for index, pair in enumerate(pairs):
            found = pair["coarse"]["cIoU"]
            middle = found["difference"]
            for interval, offset, colour, label in (
                (found["interval"], 0.1, "black", "resampling expressions"),
                (found["interval_by_group"], -0.1, "#d62728", "resampling images"),
            ):
                low, high = interval
                axis.errorbar(
                    middle,
                    index + offset,
                    xerr=[[middle - low], [high - middle]],
                    fmt="o",
                    color=colour,
                    capsize=4,
                    label=label if index == 0 else None,
                )
        axis.axvline(0.0, color="grey", linestyle="--")
        axis.set_yticks(range(len(pairs)), [f"{p['a']} − {p['b']}" for p in pairs], fontsize=8)
        axis.set_xlabel("coarse cIoU difference A − B (points), 95% intervals")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
