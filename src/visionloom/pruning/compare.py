"""`visionloom prune compare`: every pruner at every keep ratio over several seeds, and whether the
differences between them are more than the test questions' luck.

Seed k runs `prune eval` with `seed=k` into OUT/seed<k> (what a seed changes: the random pruner's
draws and the learned scorer's training; the other pruners are deterministic and repeat). A seed
already evaluated with the same settings is read back, so an interrupted comparison continues.
Then, per row (pruner, keep ratio), accuracy's mean and sample std over seeds; and per pair at the
same keep ratio (each pruner against `random`, each pruner against keep-all) the accuracy
difference over the same questions with paired bootstrap intervals (`engine.compare`), resampling
questions and resampling images (all of an image's questions together).

    OUT/compare.json   rows, pairs and what each interval supports;  OUT/results.json the same,
                       with its provenance (`visionloom.results`)
    OUT/compare.md     the tables;  OUT/compare.png  accuracy per kept token with its spread
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch

from visionloom.engine import compare
from visionloom.engine.compare import DEFAULT_RESAMPLES, interval_text, mean_std_text, points_text
from visionloom.pruning.config import PruneConfig
from visionloom.pruning.evaluate import QUESTION_OUTCOMES, evaluate_pruning, read_questions
from visionloom.results import config_sha256, supported, write_results

KEEP_ALL = "keep-all"


def evaluate_or_read(
    config: PruneConfig, data_root: Path, run_dir: Path, progress: bool, say: Callable[[str], None]
) -> dict:
    """The seed's question outcomes: read back when `run_dir` holds them for these settings,
    otherwise evaluated there."""
    outcomes = run_dir / QUESTION_OUTCOMES
    if outcomes.is_file():
        record = json.loads(outcomes.read_text())
        if record.get("config_sha256") == config_sha256(config):
            say(f"{run_dir}: evaluated in an earlier run")
            return record
        say(f"{run_dir}: evaluated with other settings; evaluating again")
    evaluate_pruning(config, data_root, run_dir, progress=progress)
    return json.loads(outcomes.read_text())


def _pair(
    hits: dict[tuple[str, str], torch.Tensor],
    a: tuple[str, str],
    b: tuple[str, str],
    images: torch.Tensor,
    resamples: int,
) -> dict:
    result = compare.compare_outcomes(hits[a], hits[b], resamples, groups=images)
    pair = {"a": f"{a[0]} {float(a[1]):.0%}", "b": f"{b[0]} {float(b[1]):.0%}", "keep": float(a[1]), **result}
    pair["supports"] = supported(pair)
    pair["supports_by_image"] = supported(pair, "interval_by_group")
    return pair


def run_comparison(
    config: PruneConfig,
    data_root: str | Path,
    out: str | Path,
    *,
    seeds: int = 3,
    resamples: int = DEFAULT_RESAMPLES,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """Evaluate seeds 0 .. seeds-1 of `config` (the scene questions), then the statistics and the
    report files in `out`."""
    seed_values = compare.check_seeds(seeds)
    if config.benchmark != "scenes":
        raise ValueError(
            f"prune compare: benchmark {config.benchmark!r} has no per-question outcome to pair "
            "(POPE's F1 is a figure of the whole set); compare on the scene questions (`scenes`)"
        )
    if config.vlm is None:
        raise ValueError("no VLM: give --vlm DIR (from `visionloom vlm pretrain`, or a real checkpoint)")
    data_root, out = Path(data_root), Path(out)
    read_questions(config, data_root)  # a data root that cannot be read is named before any folder is made
    pretraining = vlm_pretraining(config.vlm)  # and a broken pretrain.json before the evaluations
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in seed_values:
        run_dir = out / f"seed{seed}"
        say(f"prune eval, seed {seed} -> {run_dir}")
        records.append(
            evaluate_or_read(dataclasses.replace(config, seed=seed), data_root, run_dir, progress, say)
        )
    questions = records[0]["questions"]
    if any(record["questions"] != questions for record in records):
        raise ValueError(f"{out}: the seeds' runs asked different questions; evaluate them again")
    image_names = [key.split("|", 1)[0] for key in questions]
    images = torch.tensor([sorted(set(image_names)).index(name) for name in image_names])  # [Q]

    hits: dict[tuple[str, str], torch.Tensor] = {}  # (pruner, ratio) -> [seeds, Q]
    for name, by_ratio in records[0]["hits"].items():
        for ratio in by_ratio:
            hits[name, ratio] = torch.tensor([record["hits"][name][ratio] for record in records])
    rows: dict[str, dict[str, dict]] = {}
    for (name, ratio), values in hits.items():
        per_seed = (100.0 * values.double().mean(1)).tolist()
        summary = compare.summarise([{"accuracy": value} for value in per_seed], ["accuracy"])["accuracy"]
        rows.setdefault(name, {})[ratio] = {"per_seed": per_seed, **summary}

    full = (KEEP_ALL, next(iter(records[0]["hits"][KEEP_ALL])))
    pairs = []
    for name, ratio in hits:
        if name == KEEP_ALL:
            continue
        if name != "random" and ("random", ratio) in hits:
            pairs.append(_pair(hits, (name, ratio), ("random", ratio), images, resamples))
        pairs.append(_pair(hits, (name, ratio), full, images, resamples))

    report = {
        "vlm": config.vlm,
        "vlm_pretraining": pretraining,
        "questions": len(questions),
        "images": len(set(image_names)),
        "seeds": list(seed_values),
        "rows": rows,
        "pairs": pairs,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    write_results(
        out / "results.json",
        "prune_compare",
        compare.filed_form(report),
        seeds=list(seed_values),
        config=config,
    )
    write_tables(report, out / "compare.md")
    plot_comparison(report, out / "compare.png", tokens_kept(out / "seed0"))
    return report


def vlm_pretraining(vlm: str | None) -> dict | None:
    """What `vlm pretrain` wrote about the VLM (family, steps, held-out accuracy and locate
    accuracy, %), so a table can name the VLM by more than its folder; None for a checkpoint it did
    not write (a released VLM, a hub id)."""
    if vlm is None:
        return None
    report_path = Path(vlm) / "pretrain.json"
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text())
        accuracy = report["test_accuracy"]
        return {
            "family": str(report["family"]),
            "steps": int(report["steps"]),
            "all": float(accuracy["all"]),
            "locate": float(accuracy["where"]),
        }
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{report_path}: not a `vlm pretrain` report (family, steps, test_accuracy all/where): {error}"
        ) from None


def tokens_kept(run_dir: Path) -> dict[str, dict[str, float]]:
    """{pruner: {ratio: image tokens kept per image}} of one seed's `prune eval` results."""
    results = json.loads((run_dir / "results.json").read_text())["figures"]["results"]
    return {
        name: {ratio: row["image_tokens_kept"] for ratio, row in rows.items()}
        for name, rows in results.items()
    }


def write_tables(report: dict, path: Path) -> None:
    ratios = sorted({ratio for rows in report["rows"].values() for ratio in rows}, key=float, reverse=True)
    lines = [
        f"Accuracy (%) on {report['questions']} scene questions about {report['images']} images, "
        f"mean ± sample std over {len(report['seeds'])} seed(s) (the random pruner's draws and the "
        f"learned scorer's training; the other pruners repeat exactly). VLM {report['vlm']}.",
        "",
        "| pruner | " + " | ".join(f"keep {float(r):.0%}" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
    ]
    for name, rows in report["rows"].items():
        cells = [mean_std_text(rows[r]) if r in rows else "–" for r in ratios]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Differences A − B in accuracy points over the same questions, with 95% paired bootstrap "
        "intervals resampling questions and resampling images; what the image interval supports.",
        "",
        "| A − B | difference | 95% interval, questions | 95% interval, images | supports |",
        "|---|---|---|---|---|",
    ]
    for pair in report["pairs"]:
        lines.append(
            f"| {pair['a']} − {pair['b']} | {points_text(pair['difference'])} | {interval_text(pair['interval'])} | "
            f"{interval_text(pair['interval_by_group'])} | {pair['supports_by_image']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot_comparison(report: dict, path: Path, kept: dict[str, dict[str, float]]) -> Path:
    """Accuracy against image tokens kept: each pruner's mean, its std as a bar, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    full = next(iter(report["rows"][KEEP_ALL].values()))
    for name, rows in report["rows"].items():
        if name == KEEP_ALL:
            continue
        ratios = sorted(rows, key=float)
        tokens = [kept[name][ratio] for ratio in ratios]
        (line,) = axis.plot(tokens, [rows[r]["mean"] for r in ratios], "o-", label=name)
        axis.errorbar(
            tokens,
            [rows[r]["mean"] for r in ratios],
            yerr=[rows[r]["std"] for r in ratios],
            fmt="none",
            color=line.get_color(),
            capsize=3,
        )
        for token_count, ratio in zip(tokens, ratios, strict=True):
            seeds = rows[ratio]["per_seed"]
            axis.plot([token_count] * len(seeds), seeds, ".", color=line.get_color(), markersize=3)
    axis.axhline(full["mean"], color="grey", linestyle="--", label="unpruned")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("image tokens kept per image")
    axis.set_ylabel("answer accuracy (%), mean ± std; dots = seeds")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
