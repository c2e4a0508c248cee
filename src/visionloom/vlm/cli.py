"""`visionloom vlm pretrain`: the scene VLM that grounding and pruning evaluate."""

from __future__ import annotations

from pathlib import Path

import typer

from visionloom.commands import Commands, console, print_metrics, set_option

vlm = Commands(no_args_is_help=True, help="A tiny VLM that has learned the synthetic scenes.")


@vlm.command("pretrain")
def vlm_pretrain(
    out: Path = typer.Argument(..., help="Checkpoint directory to write (save_pretrained, with processor)."),
    data: Path = typer.Option(..., "--data", help="A synth-scenes directory."),
    family: str = typer.Option(
        "llava", "--family", help="llava | qwen2.5-vl: the config configs/vlm/FAMILY.yaml"
    ),
    config: str | None = typer.Option(
        None, "--config", help="Another config name under configs/vlm/ or a YAML path."
    ),
    overrides: list[str] = set_option("train.steps=100"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/run/checkpoints."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what OUT already holds."),
) -> None:
    """Train a tiny VLM of the real class from random weights on captions and questions about scenes."""
    from visionloom.vlm.config import FAMILY_PRESETS, load_config
    from visionloom.vlm.train import pretrain

    if config is None and family not in FAMILY_PRESETS:
        raise typer.BadParameter(f"--family {family!r}: choose one of {', '.join(FAMILY_PRESETS)}")
    settings = load_config(config or family, overrides)
    family = settings.family
    report = pretrain(data, out, settings, resume=resume, overwrite=overwrite)
    print_metrics(f"{family}: answer accuracy on held-out scenes (%)", report["test_accuracy"])
    print_metrics("the same model with random weights (%)", report["test_accuracy_random_weights"])
    console.print(
        f"saved to {out} ({report['train_seconds']:.0f} s of training); report in {out / 'pretrain.json'}"
    )
