"""`visionloom prune eval`: accuracy kept and prefill saved, per pruner and keep ratio."""

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
) -> None:
    """Accuracy (and POPE's precision, recall, F1, yes-ratio), prefill time and FLOPs for each pruner
    at each keep ratio of the config."""
    from visionloom.pruning.config import load_config
    from visionloom.pruning.evaluate import evaluate_pruning

    settings = load_config(config, overrides)
    if vlm is not None:
        settings.vlm = vlm
    evaluate_pruning(settings, data, out)
    console.print((out / "prune_table.md").read_text())
    console.print(f"plot: {out / 'accuracy_vs_tokens.png'}")
