"""`visionloom retrieval`: train, compare, evaluate and search; `retrieval vq`, phase 4's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.text import Text

from visionloom.commands import Commands, console, print_metrics, set_option

retrieval = Commands(no_args_is_help=True, help="Text-based person retrieval: train, evaluate, search.")
vq = Commands(no_args_is_help=True, help="Phase 4's VQ image tokenizer and its offline code cache.")
retrieval.add_typer(vq, name="vq")


@retrieval.command("train")
def retrieval_train(
    config: str = typer.Argument(
        ..., help="A config name under configs/retrieval (baseline, phase1..4, ...) or a YAML path."
    ),
    data: Path = typer.Option(..., "--data", help="Data set root."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in OUT."),
    overrides: list[str] = set_option("train.steps=50"),
) -> None:
    """Train a retrieval model; select on val; evaluate test once. Works under `accelerate launch`."""
    from visionloom.retrieval.config import load_config
    from visionloom.retrieval.train import train_retrieval

    experiment = load_config(config, overrides)
    summary = train_retrieval(experiment, data, out, resume=resume, overwrite=overwrite)
    if "test" in summary:
        print_metrics(
            f"{experiment.name}: test split (weights selected on val at step {summary['selected']['step']})",
            summary["test"],
        )


@retrieval.command("compare")
def retrieval_compare(
    configs: list[str] = typer.Argument(
        ...,
        metavar="CONFIG",
        help="Config names under configs/retrieval or YAML paths, e.g. phase3 phase4.",
    ),
    data: Path = typer.Option(..., "--data", help="Data set root (one data set for every run)."),
    out: Path = typer.Option(..., "--out", help="Report folder; each run trains into OUT/ENTRY/seedK."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per entry: train.seed=0..N-1."),
    pairs: list[str] = typer.Option(
        [],
        "--pair",
        metavar="A,B",
        help="A,B: report A minus B (repeatable; entry names as the table prints them). Default: each entry against the first.",
    ),
    sweep: str | None = typer.Option(
        None,
        "--sweep",
        help="KEY=V1,V2,...: one entry per value for each config, e.g. loss.gen_weight=0,0.1,0.5.",
    ),
    reference: str | None = typer.Option(
        None,
        "--reference",
        help="A config trained beside the others without the sweep and listed first: what each entry is compared with by default.",
    ),
    resamples: int = typer.Option(
        10_000, "--resamples", min=100, help="Bootstrap resamples of the test queries."
    ),
    vq_steps: int | None = typer.Option(
        None,
        "--vq-steps",
        min=1,
        help="Steps to fit DATA/vq when an entry needs it and it is missing. Default: the config's vq.fit.steps.",
    ),
    overrides: list[str] = set_option("train.steps=200"),
) -> None:
    """Train each config with N seeds on the same data; test once each; mean ± std per metric and a
    paired bootstrap interval of the R@1 difference for each pair. Rerun with the same OUT to continue."""
    from visionloom.retrieval.compare import make_entries, parse_pairs, run_comparison

    entries = make_entries(configs, sweep, reference)
    run_comparison(
        entries,
        data,
        out,
        seeds=seeds,
        pairs=parse_pairs(pairs, entries),
        common_overrides=overrides,
        resamples=resamples,
        vq_fit_overrides={"steps": vq_steps} if vq_steps is not None else None,
        say=lambda line: console.print(line, highlight=False),
    )
    console.print((out / "compare.md").read_text(), highlight=False, markup=False)
    console.print(f"wrote {out}/compare.json, compare.md, per_seed.csv, compare.png")


@retrieval.command("eval")
def retrieval_eval(
    checkpoint: Path = typer.Argument(
        ..., help="A run directory (its selected weights) or one of its checkpoints."
    ),
    data: Path = typer.Option(..., "--data", help="Data set root."),
    split: str = typer.Option("test", "--split", help="The split to evaluate (val or test)."),
    out: Path | None = typer.Option(
        None, "--json", help="Where to write the metrics (default CHECKPOINT/eval_<split>.json)."
    ),
) -> None:
    """R@1/5/10, mAP and mINP, text to image, on a split."""
    from visionloom.data.check import require_usable
    from visionloom.retrieval.evaluate import evaluate_split
    from visionloom.retrieval.train import load_trained

    dataset = require_usable(data)
    if split not in dataset.splits:
        raise typer.BadParameter(
            f"{split!r}; {dataset.name} has {', '.join(dataset.splits)}", param_hint="--split"
        )
    model = load_trained(checkpoint)
    metrics = evaluate_split(model, dataset[split])
    print_metrics(f"{checkpoint} on {data} ({split})", metrics)
    target = out or checkpoint / f"eval_{split}.json"
    target.write_text(json.dumps(metrics, indent=1))
    console.print(f"wrote {target}")


@retrieval.command("search")
def retrieval_search(
    checkpoint: Path = typer.Argument(..., help="A run directory or checkpoint."),
    query: str = typer.Argument(..., help="The text to search for."),
    data: Path = typer.Option(..., "--data", help="Data set root; its gallery is searched."),
    split: str = typer.Option("test", "--split", help="The split whose gallery is searched."),
    top: int = typer.Option(10, "--top", min=1, help="How many images to show."),
    pid: int | None = typer.Option(
        None,
        "--pid",
        help="The query's identity, to mark correct hits (found automatically when the query is one of the split's captions).",
    ),
    out: Path | None = typer.Option(None, "--out", help="PNG to write (default CHECKPOINT/search.png)."),
) -> None:
    """Rank the gallery for a text query and write the ranking as a PNG grid."""
    from visionloom.data.pedes import read_pedes
    from visionloom.retrieval.search import draw_grid, known_pid, search
    from visionloom.retrieval.train import load_trained

    dataset = read_pedes(data)
    if split not in dataset.splits:
        raise typer.BadParameter(
            f"{split!r}; {dataset.name} has {', '.join(dataset.splits)}", param_hint="--split"
        )
    gallery_split = dataset[split]
    hits = search(load_trained(checkpoint), gallery_split, query, top)
    true_pid = pid if pid is not None else known_pid(gallery_split, query)
    for hit in hits:
        line = Text(f"#{hit.rank}  {hit.score:.3f}  id {hit.pid}  {hit.path}")
        if true_pid is not None and hit.pid == true_pid:
            line.append(" correct", style="green")
        console.print(line, highlight=False, soft_wrap=True)
    path = draw_grid(query, hits, out or checkpoint / "search.png", true_pid)
    console.print(f"wrote {path}")


@vq.command("fit")
def vq_fit(
    data: Path = typer.Argument(..., help="Data set root; the tokenizer is fitted on its training images."),
    out: Path | None = typer.Option(None, "--out", help="Tokenizer directory (default DATA/vq)."),
    config: str | None = typer.Option(
        None,
        "--config",
        help="A retrieval config whose vq.fit sizes the tokenizer (e.g. cuhk-pedes/phase4). Default: the demo's.",
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Optimizer steps of the fit (default: the config's, 200)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of the initial weights and the batch order (default 0)."
    ),
    restart_every: int | None = typer.Option(
        None,
        "--restart-every",
        min=0,
        help="Restart unused codes every N steps (not in the last 20%); 0: never. Default: the config's, 20.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a tokenizer already there (runs trained on its codes refuse --resume).",
    ),
) -> None:
    """Train a diffusers VQModel on the training images."""
    import dataclasses

    from visionloom.data.pedes import read_pedes
    from visionloom.engine.run import refuse_to_replace
    from visionloom.retrieval.config import VQFitConfig, load_config
    from visionloom.retrieval.vq import fit_vq

    refuse_to_replace(out or data / "vq", "a VQ tokenizer", overwrite=overwrite)
    fit = load_config(config).vq.fit if config else VQFitConfig()
    given = {"steps": steps, "seed": seed, "restart_every": restart_every}
    fit = dataclasses.replace(fit, **{key: value for key, value in given.items() if value is not None})
    report = fit_vq(read_pedes(data)["train"], out or data / "vq", fit)
    console.print(f"wrote {out or data / 'vq'}: {report}")


@vq.command("cache")
def vq_cache(
    data: Path = typer.Argument(..., help="Data set root."),
    vq: Path | None = typer.Option(
        None, "--vq", help="Tokenizer directory (default DATA/vq); any diffusers VQModel."
    ),
) -> None:
    """Encode every training image once; store the codes in DATA/vq_cache, keyed by the tokenizer's hash."""
    from visionloom.data.pedes import read_pedes
    from visionloom.retrieval.vq import build_cache

    path = build_cache(data, read_pedes(data)["train"], vq or data / "vq")
    console.print(f"wrote {path}")
