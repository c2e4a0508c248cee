"""`visionloom prune eval` and `prune compare`: accuracy kept and prefill saved, per pruner and keep ratio."""

from __future__ import annotations

from pathlib import Path

import typer

from visionloom.commands import Commands, console, set_option

prune = Commands(no_args_is_help=True, help="Vision-token pruning: accuracy kept, prefill saved.")


@prune.command("eval")
def prune_eval(
    config: str = typer.Argument(
        "scenes", help="scenes (teacher-forced), pope or gqa (generated answers), or a YAML path."
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        help="scenes: a synth-scenes directory; pope: the POPE release root; gqa: the GQA root.",
    ),
    out: Path = typer.Option(Path("runs/prune"), "--out", help="Folder for the table, plot and results."),
    vlm: str | None = typer.Option(
        None, "--vlm", help="The VLM: a checkpoint directory or a hub id (org/name)."
    ),
    overrides: list[str] = set_option("max_questions=100"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what OUT already holds."),
) -> None:
    """Accuracy (and POPE's precision, recall, F1, yes-ratio), prefill time and FLOPs for each pruner
    at each keep ratio of the config."""
    from visionloom.engine.run import refuse_to_replace
    from visionloom.pruning.config import load_config
    from visionloom.pruning.evaluate import evaluate_pruning

    settings = load_config(config, overrides)
    if vlm is not None:
        settings.vlm = vlm
    refuse_to_replace(out, "a pruning evaluation", overwrite=overwrite)
    evaluate_pruning(settings, data, out)
    console.print((out / "prune_table.md").read_text())
    console.print(f"plot: {out / 'accuracy_vs_tokens.png'}")


@prune.command("compare")
def prune_compare(
    config: str = typer.Argument("scenes", help="A pruning config on the scene questions, or a YAML path."),
    data: Path = typer.Option(..., "--data", help="A synth-scenes directory."),
    out: Path = typer.Option(..., "--out", help="Report folder; seed K is evaluated into OUT/seedK."),
    vlm: str | None = typer.Option(
        None, "--vlm", help="The VLM: a checkpoint directory or a hub id (org/name)."
    ),
    seeds: int = typer.Option(
        3, "--seeds", min=1, help="Seeds: seed=0..N-1 (random draws, the learned scorer)."
    ),
    resamples: int = typer.Option(
        10_000, "--resamples", min=100, help="Bootstrap resamples of the test questions."
    ),
    overrides: list[str] = set_option("max_questions=100"),
) -> None:
    """Every pruner at every keep ratio over N seeds: mean ± std, and paired bootstrap intervals of
    each pruner against random and against keep-all. Rerun with the same OUT to continue."""
    from visionloom.pruning.compare import run_comparison
    from visionloom.pruning.config import load_config

    settings = load_config(config, overrides)
    if vlm is not None:
        settings.vlm = vlm
    run_comparison(
        settings,
        data,
        out,
        seeds=seeds,
        resamples=resamples,
        say=lambda line: console.print(line, highlight=False),
    )
    console.print((out / "compare.md").read_text(), highlight=False, markup=False)
    console.print(f"wrote {out}/compare.json, compare.md, results.json, compare.png")
