"""`visionloom doctor` and `visionloom preset`: the image-token layer on a checkpoint, and the tiny presets."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from visionloom.commands import Commands, console, parse_size_option, styled

commands = Commands()  # top-level commands: doctor
presets = Commands(no_args_is_help=True, help="Tiny random-weight presets of each supported family.")


@commands.command()
def doctor(
    model: str = typer.Argument(
        ...,
        help="A local checkpoint directory, a hub id (org/name, from the Hugging Face cache) or a preset name.",
    ),
    image_size: str | None = typer.Option(None, "--image-size", help="HEIGHTxWIDTH of the test image."),
    native: bool = typer.Option(
        False, "--native", help="Feed pixels at their own size (no processor resize)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="auto (the checkpoint's), float32, float16 or bfloat16. Default: float32 on a CPU, the "
        "checkpoint's own on a GPU.",
    ),
    device: str = typer.Option("cpu", "--device", help="Where to run, e.g. cpu or cuda:0."),
    results: Path | None = typer.Option(
        None, "--results", help="Also write the report to this results file (JSON, with its provenance)."
    ),
) -> None:
    """Report what the image-token layer does for MODEL and check it end to end."""
    import torch

    from visionloom.backbones.base import resolve_dtype
    from visionloom.backbones.doctor import run_doctor

    size = parse_size_option(image_size, "--image-size")
    resolve_dtype(dtype, torch.device("cpu"))  # the one rule for dtype names, checked before loading
    report = run_doctor(model, size, native=native, dtype=dtype, device=device)
    if results is not None:
        from visionloom.results import write_results

        write_results(results, "doctor", report.to_dict())
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        table = Table(title=f"visionloom doctor: {model}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in report.facts.items():
            table.add_row(key, value)
        for check in report.checks:
            table.add_row(
                styled("green", "ok ", check.name) if check.ok else styled("red", "FAIL ", check.name),
                Text(check.detail),
            )
        if report.facts or report.checks:  # nothing to show when the checkpoint did not load
            console.print(table)
        if report.error:
            console.print(styled("red", "error:", f" {report.error}"))
        console.print(styled("green", "healthy") if report.ok else styled("red", "not healthy"))
    raise typer.Exit(0 if report.ok else 1)


@presets.command("list")
def preset_list() -> None:
    """Name every preset."""
    from visionloom.backbones.tiny import PRESETS

    for name, builder in PRESETS.items():
        console.print(styled("bold", name, f"  {(builder.__doc__ or '').strip().splitlines()[0]}"))


@presets.command("save")
def preset_save(
    name: str = typer.Argument(..., help="Preset name, see `visionloom preset list`."),
    directory: Path = typer.Argument(..., help="Where to write the checkpoint directory."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what DIRECTORY already holds."),
) -> None:
    """Write a preset as an ordinary checkpoint directory (weights, config, processor)."""
    from visionloom.backbones.tiny import PRESETS, build_preset
    from visionloom.engine.run import refuse_to_replace

    if name not in PRESETS:
        raise typer.BadParameter(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}", param_hint="NAME")
    refuse_to_replace(directory, f"the {name} preset", overwrite=overwrite)
    adapter = build_preset(name, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    adapter.save_pretrained(directory)
    console.print(f"wrote {name} to {directory}")
