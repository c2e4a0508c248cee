"""`visionloom ground`: train, compare, evaluate and show referring segmentation from a frozen VLM."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from visionloom.commands import (
    Commands,
    console,
    evaluation_split_option,
    metrics_json_option,
    print_split_metrics,
    set_option,
)

ground = Commands(
    no_args_is_help=True, help="Referring segmentation from a frozen VLM's attention, refined by SAM."
)


@ground.command("train")
def ground_train(
    config: str = typer.Argument(..., help="A name under configs/grounding/ or a YAML path."),
    data: Path = typer.Option(
        ..., "--data", help="RefCOCO-style root: refs.json (or refs(unc).p) + instances.json."
    ),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    vlm: str | None = typer.Option(
        None, "--vlm", help="Frozen VLM: a checkpoint directory, a hub id (org/name) or a preset name."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in OUT."),
    overrides: list[str] = set_option("train.steps=100"),
) -> None:
    """Train the mask head, text projection and SAM decoder on a frozen VLM; select on val, test once."""
    from visionloom.grounding.config import load_config
    from visionloom.grounding.train import train_grounding

    settings = load_config(config, overrides)
    if vlm is not None:
        settings.vlm = vlm
    summary = train_grounding(settings, data, out, resume=resume, overwrite=overwrite)
    print_split_metrics(
        f"{settings.name}, % (weights of step {summary['selected']['step']}, selected on val)",
        {split: summary[split] for split in summary["evaluated"]},
    )
    console.print(f"images: {summary['image_dir']}\nrun: {out}", highlight=False)


@ground.command("compare")
def ground_compare(
    configs: list[str] = typer.Argument(
        ...,
        metavar="CONFIG",
        help="Config names under configs/grounding or YAML paths, and the baselines prior-box and prior-mask.",
    ),
    data: Path = typer.Option(..., "--data", help="RefCOCO-style root (one data set for every run)."),
    out: Path = typer.Option(..., "--out", help="Report folder; each run trains into OUT/ENTRY/seedK."),
    vlm: str | None = typer.Option(
        None, "--vlm", help="The frozen VLM of every config that names none (a checkpoint, hub id or preset)."
    ),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per config: train.seed = sam.seed = 0..N-1."),
    split: str = typer.Option(
        "test", "--split", help="The split compared (test; testA or testB for RefCOCO)."
    ),
    pairs: list[str] = typer.Option(
        [],
        "--pair",
        metavar="A,B",
        help="A,B: report A minus B (repeatable; entry names as given). Default: each entry against the first.",
    ),
    resamples: int = typer.Option(
        10_000, "--resamples", min=100, help="Bootstrap resamples of the test expressions."
    ),
    overrides: list[str] = set_option("train.steps=100"),
) -> None:
    """Train each config with N seeds on the same data; test once each; mean ± std per metric and
    paired bootstrap intervals of cIoU, mIoU and P@0.5 for each pair. Rerun with the same OUT to continue."""
    from visionloom.engine.compare import make_entries, parse_pairs
    from visionloom.grounding.compare import run_comparison

    entries = make_entries(configs)
    run_comparison(
        entries,
        data,
        out,
        seeds=seeds,
        split=split,
        vlm=vlm,
        pairs=parse_pairs(pairs, entries),
        common_overrides=overrides,
        resamples=resamples,
        say=lambda line: console.print(line, highlight=False),
    )
    console.print((out / "compare.md").read_text(), highlight=False, markup=False)
    console.print(f"wrote {out}/compare.json, compare.md, results.json, compare.png")


@ground.command("eval")
def ground_eval(
    checkpoint: Path = typer.Argument(..., help="A `ground train` run directory."),
    data: Path = typer.Option(..., "--data", help="The data root the run was trained on (or another)."),
    split: str | None = evaluation_split_option(),
    json_out: Path | None = metrics_json_option(),
) -> None:
    """cIoU, mIoU and P@0.5 of the coarse and the SAM-refined masks, per split."""
    from visionloom.grounding.evaluate import evaluate_run, read_run_config

    evaluation = evaluate_run(checkpoint, data, split)
    print_split_metrics(f"{read_run_config(checkpoint).name}, %", evaluation)
    if json_out is not None:
        json_out.write_text(json.dumps(evaluation, indent=1))


@ground.command("baselines")
def ground_baselines(
    data: Path = typer.Option(
        ..., "--data", help="RefCOCO-style root: refs.json (or refs(unc).p) + instances.json."
    ),
    split: str | None = evaluation_split_option(),
    json_out: Path | None = metrics_json_option(),
) -> None:
    """cIoU, mIoU and P@0.5 of masks that use neither image nor expression (a centred box of the mean
    object size; the training masks' mean): what a VLM's attention has to beat."""
    from visionloom.grounding.baselines import baselines_per_split

    train, results = baselines_per_split(data, split)
    table = Table(
        title=f"baselines without image or expression (priors fitted on {train} training samples), %"
    )
    table.add_column("split")
    table.add_column("baseline")
    for column in ("cIoU", "mIoU", "P@0.5"):
        table.add_column(column, justify="right")
    for name, baselines in results.items():
        for baseline, metrics in baselines.items():
            table.add_row(name, baseline, *(f"{metrics[key]:.2f}" for key in ("cIoU", "mIoU", "P@0.5")))
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=1))


@ground.command("show")
def ground_show(
    checkpoint: Path = typer.Argument(..., help="A `ground train` run directory."),
    data: Path = typer.Option(..., "--data", help="The scenes or RefCOCO root the run was trained on."),
    n: int = typer.Option(8, "--n", help="How many samples."),
    split: str = typer.Option("val", "--split", help="Which split's samples (val, test, testA, testB, ...)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the PNGs (default CHECKPOINT/show)."),
) -> None:
    """A PNG per sample: image, expression, attention map, coarse and refined masks."""
    from visionloom.grounding.build import read_samples
    from visionloom.grounding.evaluate import load_trained, read_run_config
    from visionloom.grounding.show import show

    samples = read_samples(read_run_config(checkpoint), data, split)[:n]
    model, _, features = load_trained(checkpoint, samples=samples, split=split)
    paths = show(model, samples, features, out or checkpoint / "show")
    console.print(f"wrote {len(paths)} images to {paths[0].parent}")
