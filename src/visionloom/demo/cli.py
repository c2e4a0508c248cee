"""`visionloom demo`: the main job on its embedded default (see `demo/run.py`)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import typer

from visionloom.commands import Commands, console

commands = Commands()  # top-level commands: demo


def continue_line(out: Path) -> str:
    """After Ctrl-C: the same command line with the report folder it wrote, which continues it."""
    arguments = list(sys.argv[1:])
    if "--out" in arguments:  # the old value goes with the flag; the folder is given below
        del arguments[arguments.index("--out") : arguments.index("--out") + 2]
    again = shlex.join(["visionloom", *arguments, "--out", str(out)])
    return f"demo interrupted; {out} keeps the data and every finished phase or checkpoint. continue with: {again}"


@commands.command(on_interrupt=lambda arguments: continue_line(arguments["out"]))
def demo(
    phases: str | None = typer.Option(
        None,
        "--phases",
        help="Comma-separated phases trained with --seeds seeds each, each compared with the first, "
        "or all. Default: phase3,phase4 (--quick: none).",
    ),
    reference: str = typer.Option(
        "baseline", "--reference", help="A phase trained once as the reference row; none to skip it."
    ),
    seeds: int | None = typer.Option(None, "--seeds", min=1, help="Seeds per compared phase. Default: 3."),
    out: Path = typer.Option(
        default_factory=lambda: Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"),
        show_default="runs/demo-<time>",
        help="Report folder.",
    ),
    ids: int | None = typer.Option(
        None,
        "--ids",
        min=1,
        help="Identities in the synthetic data set (at least a training batch's worth). Default: 300 "
        "(--quick: 60).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, the VQ fit and the first training seed."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Training steps per run. Default: 150 (--quick: 200)."
    ),
    vq_steps: int = typer.Option(
        200, "--vq-steps", min=1, help="Steps to fit the VQ tokenizer (when a phase needs it)."
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="A one-minute run: 60 identities, the reference only, 200 steps (options given beside it win).",
    ),
) -> None:
    """The main job: synthetic data, VQ tokenizer, phase 3 against phase 4 over seeds (and the
    baseline once), evaluated on test, with a report under runs/."""
    from visionloom.demo.run import DEFAULT, QUICK, parse_phases, run_demo

    defaults = QUICK if quick else DEFAULT
    try:
        names = parse_phases(defaults["phases"] if phases is None else phases)
        chosen_reference = None if reference == "none" else parse_phases(reference)[0]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--phases/--reference") from None
    run_demo(
        out,
        names,
        reference=chosen_reference,
        seeds=seeds or defaults["seeds"],
        identities=ids or defaults["ids"],
        seed=seed,
        steps=steps or defaults["steps"],
        vq_steps=vq_steps,
        console=console,
    )
