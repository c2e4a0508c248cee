"""`visionloom data`: check a data set as training reads it, draw the synthetic ones."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from visionloom.commands import Commands, console, parse_size_option, styled

data = Commands(no_args_is_help=True, help="Data sets: check them, generate synthetic ones.")


@data.command("check")
def data_check(
    root: Path = typer.Argument(..., help="Data set root (CUHK-PEDES, ICFG-PEDES or RSTPReid layout)."),
    image_size: str | None = typer.Option(
        None,
        "--image-size",
        help="Require every image to be HEIGHTxWIDTH. Default: sizes are summarised, not required "
        "(training resizes every image).",
    ),
) -> None:
    """Report every problem of a data set (missing or unreadable images, empty captions, identities)
    and summarise its image sizes."""
    from visionloom.data.check import check_pedes
    from visionloom.progress import track

    expected = parse_size_option(image_size, "--image-size")
    report = check_pedes(root, expected, progress=lambda it: track(it, description="checking entries"))
    name, problems = report.name, report.problems
    console.print(f"image sizes: {report.sizes.describe()}", highlight=False, soft_wrap=True)
    for problem in problems:
        console.print(styled("red", "problem", f" {problem}"), highlight=False)
    if problems:
        console.print(styled("red", f"{len(problems)} problem(s)", f" in {root} ({name})"))
        raise typer.Exit(1)
    console.print(styled("green", "ok", f" {root} ({name}): no problems"))


@data.command("synth-pedes")
def data_synth_pedes(
    out: Path = typer.Argument(..., help="Directory to write (CUHK-PEDES layout)."),
    ids: int = typer.Option(
        300, "--ids", help="Number of identities (70% train, 10% val, 20% test by default)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the drawing: the same seed, the same data set."),
    images_per_id: int = typer.Option(4, "--images-per-id", min=1, help="Images of each identity."),
    val_share: float = typer.Option(
        0.1, "--val-share", help="Share of identities in val, taken from train (test stays the last 20%)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into OUT though it holds files."),
) -> None:
    """Draw a synthetic pedestrian data set: 384x128 images, two captions each."""
    from visionloom.data.synth_pedes import generate
    from visionloom.engine.run import refuse_to_replace

    refuse_to_replace(out, "a synthetic data set", overwrite=overwrite)
    try:
        annotation = generate(out, ids, seed=seed, images_per_identity=images_per_id, val_share=val_share)
    except ValueError as error:
        hint = "--val-share" if "--val-share" in str(error) else "--ids"
        raise typer.BadParameter(str(error), param_hint=hint) from None
    console.print(f"wrote {ids * images_per_id} images of {ids} identities; annotations in {annotation}")


@data.command("synth-scenes")
def data_synth_scenes(
    out: Path = typer.Argument(
        ..., help="Directory to write (RefCOCO-style refs.json + COCO instances.json)."
    ),
    scenes: int = typer.Option(1000, "--scenes", help="Number of scenes (80% train, 10% val, 10% test)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the drawing: the same seed, the same scenes."),
    size: int = typer.Option(224, "--size", help="Image side in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into OUT though it holds files."),
) -> None:
    """Draw scenes of shapes with referring expressions, masks, captions and questions."""
    from visionloom.data.synth_scenes import generate
    from visionloom.engine.run import refuse_to_replace

    refuse_to_replace(out, "synthetic scenes", overwrite=overwrite)
    try:
        refs = generate(out, scenes, seed=seed, size=size)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--scenes") from None
    count = len(json.loads(refs.read_text()))
    console.print(f"wrote {scenes} scenes with {count} referring objects to {out}")
