"""Render the results tables in README.md and docs/ from the results files under docs/results/.

A page asks for a table with a pair of markers; everything between them is this script's:

    <!-- results: demo.json -->            (a path or a glob under docs/results/)
    <!-- /results -->

Each results file says its `kind` (`visionloom.results`), and one renderer per kind turns the
files into Markdown: the table, then the command, commit, date and machine that measured it.
Published figures (what a paper reports) are files of kind `published`, with their sources.

    .venv/bin/python scripts/render_results.py           # rewrite the pages
    .venv/bin/python scripts/render_results.py --check   # exit 1 if a page differs from its files

It imports no torch (`visionloom.results` is standard library only), so the docs test runs it fast.
"""

from __future__ import annotations

import argparse
import glob
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from visionloom.results import read_results, supported

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
MARKER = re.compile(r"(<!-- results: (?P<pattern>\S+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)
METRICS = ("R1", "R5", "R10", "mAP", "mINP")
METRIC_NAMES = {"R1": "R@1", "R5": "R@5", "R10": "R@10", "mAP": "mAP", "mINP": "mINP"}


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def read_record(path: Path) -> dict:
    """A results file (`visionloom.results.read_results`); a bad one stops the script, named."""
    try:
        return read_results(path)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def provenance(records: list[dict]) -> str:
    """One line: what measured these figures, where and when."""
    first = records[0]
    machine = first["machine"]
    commit = (first["commit"] or "no git checkout")[:10] + (
        " with uncommitted code" if first.get("commit_dirty") else ""
    )
    command = f"`{first['command']}`" + (f" and {len(records) - 1} more like it" if len(records) > 1 else "")
    where = f"{machine.get('usable_cpus')} usable CPUs ({machine.get('cpu')})"
    if machine.get("torch_threads") is not None:
        where += f", {machine['torch_threads']} torch threads"
    if machine.get("gpu"):
        where += f", {machine['gpu']}"
    load = machine.get("load_average_at_start")
    if load:
        where += f", load average {load[0]:.2f} at start"
    seeds = first.get("seeds")
    seeds_text = f"; seeds {', '.join(map(str, seeds))}" if seeds else ""
    return f"*Measured by {command} at commit `{commit}` on {first['date'][:10]}; {where}{seeds_text}.*"


def _interval(interval: list[float] | None) -> str:
    return "n/a" if interval is None else f"[{interval[0]:+.1f}, {interval[1]:+.1f}]"


def render_demo(records: list[dict]) -> list[str]:
    (record,) = records
    figures = record["figures"]
    header = ["run", "seeds", *(METRIC_NAMES[m] for m in METRICS), "train s (each)"]
    rows = []
    for name, summary in figures["reference"].items():
        rows.append(
            [
                f"{name} (reference)",
                1,
                *(f"{summary['test'][m]:.1f}" for m in METRICS),
                f"{summary['train_seconds']:.0f}",
            ]
        )
    comparison = figures.get("comparison") or {"entries": {}, "pairs": []}
    for name, entry in comparison["entries"].items():
        summary, runs = entry["summary"], entry["per_seed"]
        seconds = statistics.fmean(run["seconds"] for run in runs)
        rows.append(
            [
                name,
                len(runs),
                *(f"{summary[m]['mean']:.1f} ± {summary[m]['std']:.1f}" for m in METRICS),
                f"{seconds:.0f}",
            ]
        )
    lines = table(header, rows) + [""]
    for pair in comparison["pairs"]:
        per_seed = ", ".join(f"{value:+.1f}" for value in pair["per_seed_difference"])
        lines.append(
            f"**{pair['a']} − {pair['b']}: R@1 {pair['difference']:+.1f} points**, 95% paired bootstrap "
            f"interval {_interval(pair['interval'])} resampling test queries and "
            f"{_interval(pair.get('interval_by_identity'))} resampling test identities "
            f"({pair['resamples']} resamples); seed by seed {per_seed}."
        )
        lines.append("")
    if figures.get("selection"):
        from visionloom.demo.run import selection_line

        lines += [selection_line(figures["selection"]), ""]
    lines.append(
        f"Mean ± sample std over seeds; chance R@1 is {figures['chance_R1']:.1f}%. "
        f"The whole demo took {figures['seconds']:.0f} s."
    )
    return lines + ["", provenance(records)]


DOCTOR_COLUMNS = (
    "family",
    "vision tower",
    "patch size",
    "pooling / merge",
    "CLS policy",
    "feature layer(s)",
    "tokens per image",
    "vision width",
    "text width",
)


def render_doctor(records: list[dict]) -> list[str]:
    rows = []
    for record in records:
        report = record["figures"]
        if not report["ok"]:
            raise SystemExit(f"the doctor found {report['model']} not healthy: {report['error']}")
        rows.append([report["facts"].get(column, "") for column in DOCTOR_COLUMNS])
    return table(list(DOCTOR_COLUMNS), rows) + ["", provenance(records)]


def render_one_pass(records: list[dict]) -> list[str]:
    (record,) = records
    f = record["figures"]
    rows = [[f["batch"], f"{f['one_pass_s']:.3f}", f"{f['two_pass_s']:.3f}", f"**{f['ratio']:.2f}**"]]
    header = ["images per batch", "one pass (s)", "two passes (s)", "two passes / one pass"]
    return table(header, rows) + ["", provenance(records)]


def render_prune_speed(records: list[dict]) -> list[str]:
    (record,) = records
    rows = [
        [
            name,
            f["layers"],
            f["image_tokens"],
            f["kept"],
            f"{f['full_ms']:.0f}",
            f"{f['pruned_ms']:.0f}",
            f"**{f['ratio']:.2f}**",
        ]
        for name, f in record["figures"].items()
    ]
    header = [
        "model shape",
        "LM layers",
        "image tokens",
        "kept",
        "full prefill (ms)",
        "pruned (ms)",
        "full / pruned",
    ]
    return table(header, rows) + ["", provenance(records)]


def render_generate_speed(records: list[dict]) -> list[str]:
    (record,) = records
    rows = [
        [
            name,
            f["layers"],
            f"**{f['loop_over_generate']:.3f}**",
            f"{f['full']['ttft_s'] * 1000:.0f} / {f['pruned']['ttft_s'] * 1000:.0f}",
            f"{f['ttft_speedup']:.2f}",
            f"{f['flops_ratio']:.2f}",
            f"**{f['ttft_speedup_over_flops_ratio']:.2f}**",
            f"{f['full']['decode_tokens_per_s']:.1f} / {f['pruned']['decode_tokens_per_s']:.1f}",
            f"{f['full']['cache_bytes'] / 2**20:.0f} / {f['pruned']['cache_bytes'] / 2**20:.0f}",
        ]
        for name, f in record["figures"].items()
    ]
    header = [
        "model shape, batch",
        "LM layers",
        "loop / generate",
        "first token, full / 64 kept (ms)",
        "speed-up",
        "FLOPs ratio",
        "speed-up / FLOPs ratio",
        "decoding, full / pruned (tokens/s)",
        "KV cache, full / pruned (MiB)",
    ]
    return table(header, rows) + ["", provenance(records)]


def render_under_load(records: list[dict]) -> list[str]:
    lines = []
    for record in records:
        figures = dict(record["figures"])
        competitor, same = figures.pop("competitor"), figures.pop("same_session")
        where = "in the run's own session" if same else "each in a session of its own"
        lines += [f"Busy processes: {competitor} jobs, {where}.", ""]
        rows = []
        for policy, by_load in figures.items():
            cells = [policy, f"{by_load['0']['seconds_per_step'] * 1000:.0f}"]
            for competitors in ("1", "2"):
                cells.append(
                    f"{by_load[competitors]['seconds_per_step'] * 1000:.0f} (**{by_load[competitors]['slowdown']:.2f}x**)"
                )
            rows.append(cells)
        header = ["thread policy", "idle (ms/step)", "beside 1 busy process", "beside 2 busy processes"]
        lines += table(header, rows) + [""]
    return lines + [provenance(records)]


def render_eval_speed(records: list[dict]) -> list[str]:
    (record,) = records
    f = record["figures"]
    rows = []
    for dim, d in f["dims"].items():
        argsort = f"{d['argsort_s'] / d['compiled_s']:.1f}×" if "argsort_s" in d else "not run"
        rows.append(
            [
                dim,
                f"{d['floor_s']:.2f}",
                f"{d['compiled_s']:.2f} (**{d['compiled_ratio']:.2f}**)",
                f"{d['eager_s']:.2f} ({d['eager_ratio']:.2f})",
                f"{d['build_s']:.1f}",
                argsort,
                "yes" if d["identical"] and d.get("argsort_agrees", True) else "**no**",
            ]
        )
    header = [
        "dim",
        "floor (CPU s)",
        "compiled count (CPU s, / floor)",
        "eager count (CPU s, / floor)",
        "first call with the build (s)",
        "IRRA's argsort / compiled",
        "metrics identical",
    ]
    lines = table(header, rows)
    if "full" in f:
        full = f["full"]
        lines += [
            "",
            f"{full['size']} × {full['size']} in one process: {full['cpu_s']:.0f} CPU s, peak RSS {full['peak_mb']:.0f} MB.",
        ]
    t = f["torchmetrics"]
    lines += [
        "",
        f"torchmetrics on {t['size']} × {t['size']} cosine scores near 0: {t['time_ratio']:.0f}× the eager "
        f"evaluator's time; its `RetrievalMAP` {t['torchmetrics_mAP']:.3f} against the true mAP {t['mAP']:.3f} "
        f"({t['torchmetrics_mAP_shifted']:.3f} once every score is shifted by +2); its `RetrievalRecall@5` "
        f"{t['torchmetrics_recall5']:.3f} against R@5 {t['R5']:.3f}.",
        "",
        provenance(records),
    ]
    return lines


def render_train_step(records: list[dict]) -> list[str]:
    (record,) = records
    f = record["figures"]
    rows = [
        [
            f["vq"],
            f["batch"],
            f"{f['phase3_ms']:.0f}",
            f"{f['phase4_cached_ms']:.0f}",
            f"{f['phase4_online_ms']:.0f}",
            f"**{f['ratio']:.2f}**",
        ]
    ]
    header = [
        "VQ",
        "batch",
        "phase 3 (ms)",
        "phase 4, codes cached (ms)",
        "phase 4, encoded online (ms)",
        "online / cached",
    ]
    return table(header, rows) + ["", provenance(records)]


def render_vlm_step(records: list[dict]) -> list[str]:
    (record,) = records
    figures = record["figures"]
    rows = [
        [
            family,
            f"{f['in_step_samples_per_s']:.1f}",
            f"{f['worker_samples_per_s']:.1f}",
            f"**{f['ratio']:.2f}**",
        ]
        for family, f in figures["families"].items()
    ]
    header = [
        "scene VLM",
        "batch prepared in the step (samples/s)",
        "one worker (samples/s)",
        "worker / in step",
    ]
    lines = table(header, rows)
    lines += [
        "",
        f"Median of the trainer's logged rates over {figures['steps']} steps, batch 32, the first interval left out.",
    ]
    return lines + ["", provenance(records)]


def render_patch_embed(records: list[dict]) -> list[str]:
    (record,) = records
    f = record["figures"]
    rows = [[f["batch"], f"{f['conv3d_ms']:.0f}", f"{f['product_ms']:.0f}", f"**{f['ratio']:.2f}**"]]
    header = ["batch", "Conv3d step (ms)", "matrix-product step (ms)", "Conv3d / product"]
    return table(header, rows) + ["", provenance(records)]


def render_recipe_step(records: list[dict]) -> list[str]:
    (record,) = records
    recipes = record["figures"]["recipes"]
    baseline = recipes.get("baseline", {}).get("step_s")
    rows = [
        [
            f"`{name}`",
            f"{r['parameters_M']:.1f} M",
            f"{r['step_s']:.2f}",
            f"{r['step_s'] / baseline:.2f}" if baseline else "",
            f"{r['peak_rss_GB']:.2f}",
            "on" if r["gradient_checkpointing"] else "off",
        ]
        for name, r in recipes.items()
    ]
    header = [
        "recipe",
        "parameters",
        "step (s)",
        "step / baseline's",
        "peak memory (GB)",
        "gradient checkpointing",
    ]
    return table(header, rows) + ["", provenance(records)]


def render_threads(records: list[dict]) -> list[str]:
    (record,) = records
    f = record["figures"]
    names = {
        "spin": "spinning (torch's default)",
        "passive": "sleeping (PASSIVE)",
        "one": "one thread, sleeping",
    }
    rows = [
        [names[key], f[key]["threads"], f"{f[key]['cpu']:.2f}", f"{f[key]['wall']:.2f}"]
        for key in ("spin", "passive", "one")
    ]
    header = ["waiting OpenMP threads", "threads", "CPU s per step", "wall s per step"]
    lines = table(header, rows)
    lines += [
        "",
        f"With {f['load']} busy processes beside it on {f['cores']} cores: spinning / sleeping, CPU seconds "
        f"per step = **{f['ratio']:.2f}**.",
        "",
        provenance(records),
    ]
    return lines


def render_published(records: list[dict]) -> list[str]:
    (record,) = records
    f = record["figures"]
    lines = table(f["columns"], f["rows"])
    sources = "; ".join(record["sources"])
    return lines + ["", f"*{f['caption']} Sources: {sources}.*"]


def render_vlm_compare(records: list[dict]) -> list[str]:
    (record,) = records
    # (column, key): the locate prompts ("where"), all scene questions, then three kinds of them
    columns = [
        ("all %", "all"),
        ("locate %", "where"),
        ("scene questions %", "qa"),
        ("where is …? %", "qa:where"),
        ("what colour …? %", "qa:what-color"),
        ("what shape …? %", "qa:what-shape"),
    ]
    columns = [
        (title, key)
        for title, key in columns
        if any(key in entry["summary"] for entry in record["figures"]["entries"].values())
    ]
    runs = [run for entry in record["figures"]["entries"].values() for run in entry["per_seed"]]
    # Files written before the steps were kept: the last validation is the last step.
    steps = sorted({run.get("steps") or max(step for step, _ in run["val_where_by_step"]) for run in runs})
    shown_steps = (steps[0] // 5, 3 * steps[0] // 5, steps[0])
    header = [
        "scene VLM",
        "seed",
        *(title for title, _ in columns),
        "val locate % by step " + " / ".join(str(step) for step in shown_steps),
    ]
    rows = []
    for name, entry in record["figures"]["entries"].items():
        overrides = " ".join(entry.get("overrides") or [])
        label = f"{name} {overrides}".strip()
        for run in entry["per_seed"]:
            curve = dict((int(step), value) for step, value in run["val_where_by_step"])
            by_step = " / ".join(f"{curve[step]:.0f}" if step in curve else "–" for step in shown_steps)
            cells = [f"{run[key]:.1f}" if key in run else "–" for _, key in columns]
            rows.append([label, run["seed"], *cells, by_step])
        summary = entry["summary"]
        cells = [
            f"{summary[key]['mean']:.1f} ± {summary[key]['std']:.1f}" if key in summary else "–"
            for _, key in columns
        ]
        rows.append([f"**{label}**", "mean ± std", *cells, ""])
    lines = table(header, rows)
    lines += [
        "",
        f"Held-out exact-match accuracy of each seed (`seed` = `train.seed`), "
        f"{' or '.join(str(step) for step in steps)} steps each, and "
        "mean ± sample std over seeds. Locate: `locate <expression>` → its location.",
    ]
    return lines + ["", provenance(records)]


def render_ground_compare(records: list[dict]) -> list[str]:
    (record,) = records
    report = record["figures"]
    masks = [
        m
        for m in ("coarse", "refined")
        if any(f"{m}_cIoU" in e["summary"] for e in report["entries"].values())
    ]
    columns = [f"{mask}_{metric}" for mask in masks for metric in ("cIoU", "mIoU", "P@0.5")]
    rows = [
        [
            name,
            len(entry["per_seed"]),
            *(
                f"{entry['summary'][c]['mean']:.1f} ± {entry['summary'][c]['std']:.1f}"
                if c in entry["summary"]
                else "–"
                for c in columns
            ),
        ]
        for name, entry in report["entries"].items()
    ]
    lines = table(["entry", "seeds", *(c.replace("_", " ") for c in columns)], rows) + [""]
    pairs = [
        [
            f"{pair['a']} − {pair['b']}",
            f"{mask} {metric}",
            f"{found['difference']:+.1f}",
            _interval(found["interval"]),
            _interval(found["interval_by_group"]),
            supported({"a": pair["a"], "b": pair["b"], **found}, "interval_by_group"),
        ]
        for pair in report["pairs"]
        for mask in masks
        for metric, found in pair.get(mask, {}).items()
    ]
    lines += table(
        ["A − B", "metric", "points", "95% interval (expressions)", "95% interval (images)", "supports"],
        pairs,
    )
    lines += [
        "",
        f"Split `{report['split']}`: {report['expressions']} expressions about {report['images']} images. "
        "Mean ± sample std over seeds (a baseline is one fit); cIoU differences pool every seed's "
        f"intersections and unions. Paired bootstrap ({report['resamples']} resamples); what the image "
        "interval supports.",
    ]
    return lines + ["", provenance(records)]


def render_prune_compare(records: list[dict]) -> list[str]:
    lines = []
    for record in records:
        report = record["figures"]
        ratios = sorted({r for rows in report["rows"].values() for r in rows}, key=float, reverse=True)
        header = ["pruner", *(f"keep {float(r):.0%}" for r in ratios)]
        rows = [
            [name, *(f"{by[r]['mean']:.1f} ± {by[r]['std']:.1f}" if r in by else "–" for r in ratios)]
            for name, by in report["rows"].items()
        ]
        pretraining = report.get("vlm_pretraining")
        vlm = (
            f"**the {pretraining['family']} scene VLM** ({pretraining['steps']} pretraining steps; "
            f"held-out accuracy {pretraining['all']:.1f} %, locate {pretraining['locate']:.1f} %)"
            if pretraining
            else f"**{report['vlm']}**"
        )
        lines += [
            f"{vlm}: accuracy %, {report['questions']} questions about {report['images']} images",
            "",
        ]
        lines += table(header, rows) + [""]
        pairs = [
            [
                f"{p['a']} − {p['b']}",
                f"{p['difference']:+.1f}",
                _interval(p["interval_by_group"]),
                supported(p, "interval_by_group"),
            ]
            for p in report["pairs"]
        ]
        lines += table(["A − B", "points", "95% interval (images)", "supports"], pairs) + [""]
    lines.append(
        "Mean ± sample std over seeds (the random pruner's draws and the learned scorer's training; the "
        "other pruners repeat exactly); paired bootstrap over test images, all of an image's questions together."
    )
    return lines + ["", provenance(records)]


RENDERERS: dict[str, Callable[[list[dict]], list[str]]] = {
    "prune_compare": render_prune_compare,
    "ground_compare": render_ground_compare,
    "vlm_compare": render_vlm_compare,
    "demo": render_demo,
    "doctor": render_doctor,
    "one_pass": render_one_pass,
    "prune_speed": render_prune_speed,
    "generate_speed": render_generate_speed,
    "under_load": render_under_load,
    "eval_speed": render_eval_speed,
    "train_step": render_train_step,
    "vlm_step": render_vlm_step,
    "patch_embed": render_patch_embed,
    "recipe_step": render_recipe_step,
    "threads": render_threads,
    "published": render_published,
}


def render(pattern: str, where: Path) -> str:
    """The Markdown between one pair of markers."""
    files = sorted(Path(name) for name in glob.glob(str(RESULTS / pattern)))
    if not files:
        raise SystemExit(f"{where}: no results file matches docs/results/{pattern}")
    records = [read_record(path) for path in files]
    kinds = {record["kind"] for record in records}
    if len(kinds) != 1:
        raise SystemExit(f"{where}: docs/results/{pattern} mixes kinds {sorted(kinds)}")
    (kind,) = kinds
    if kind not in RENDERERS:
        raise SystemExit(f"{where}: no renderer for results of kind {kind!r} (known: {', '.join(RENDERERS)})")
    return "\n".join(RENDERERS[kind](records)) + "\n"


def rendered(page: Path) -> str:
    text = page.read_text()
    return MARKER.sub(lambda m: m.group(1) + render(m.group("pattern"), page) + m.group(4), text)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is stale")
    args = parser.parse_args()
    stale = []
    for page in pages():
        new = rendered(page)
        if new != page.read_text():
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(
            f"results tables differ from docs/results/ in: {', '.join(map(str, stale))}; "
            "run scripts/render_results.py",
            file=sys.stderr,
        )
        return 1
    if not args.check:
        print(f"rendered {len(stale)} page(s)" + (f": {', '.join(map(str, stale))}" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
