"""The `visionloom` command: one entry point, one sub-command per job."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Image tokens in vision-language models, done right."
)
preset_app = typer.Typer(no_args_is_help=True, help="Tiny random-weight presets of each supported family.")
app.add_typer(preset_app, name="preset")
console = Console()


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs too.")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


@app.command()
def doctor(
    model: str = typer.Argument(..., help="A local checkpoint directory or a preset name."),
    image_size: str | None = typer.Option(None, "--image-size", help="HEIGHTxWIDTH of the test image."),
    native: bool = typer.Option(
        False, "--native", help="Feed pixels at their own size (no processor resize)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Report what the image-token layer does for MODEL and check it end to end."""
    from visionloom.backbones.doctor import parse_size, run_doctor

    try:
        size = parse_size(image_size) if image_size else None
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    report = run_doctor(model, size, native=native)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        table = Table(title=f"visionloom doctor: {model}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in report.facts.items():
            table.add_row(key, value)
        for check in report.checks:
            table.add_row(("[green]ok[/] " if check.ok else "[red]FAIL[/] ") + check.name, check.detail)
        console.print(table)
        if report.error:
            console.print(f"[red]error:[/] {report.error}")
        console.print("[green]healthy[/]" if report.ok else "[red]not healthy[/]")
    raise typer.Exit(0 if report.ok else 1)


@preset_app.command("list")
def preset_list() -> None:
    """Name every preset."""
    from visionloom.backbones.tiny import PRESETS

    for name, builder in PRESETS.items():
        console.print(f"[bold]{name}[/]  {(builder.__doc__ or '').strip().splitlines()[0]}")


@preset_app.command("save")
def preset_save(
    name: str = typer.Argument(..., help="Preset name, see `visionloom preset list`."),
    directory: Path = typer.Argument(..., help="Where to write the checkpoint directory."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
) -> None:
    """Write a preset as an ordinary checkpoint directory (weights, config, processor)."""
    from visionloom.backbones.tiny import PRESETS, build_preset

    if name not in PRESETS:
        raise typer.BadParameter(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}", param_hint="NAME")
    adapter = build_preset(name, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    adapter.save_pretrained(directory)
    console.print(f"wrote {name} to {directory}")


if __name__ == "__main__":
    app()
