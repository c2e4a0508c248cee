"""The `visionloom` command: the root that joins each system's commands (`<system>/cli.py`).

What every command shares (one line per error, the --set option, the consoles) is in
`visionloom/commands.py`. Nothing here imports a model library: `--help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.logging import RichHandler

import visionloom.results  # noqa: F401  (first: it reads the load average before any work starts)
from visionloom.backbones.cli import commands as backbone_commands
from visionloom.backbones.cli import presets
from visionloom.commands import Commands, console, error_console, set_option
from visionloom.data.cli import data
from visionloom.demo.cli import commands as demo_commands
from visionloom.grounding.cli import ground
from visionloom.pruning.cli import prune
from visionloom.retrieval.cli import retrieval, vq
from visionloom.vlm.cli import vlm

app = Commands(
    add_completion=False, no_args_is_help=True, help="Image tokens in vision-language models, done right."
)
config_app = Commands(no_args_is_help=True, help="The configs each system ships, resolved and explained.")
for sub_app, name in (
    (presets, "preset"),
    (data, "data"),
    (retrieval, "retrieval"),
    (ground, "ground"),
    (prune, "prune"),
    (vlm, "vlm"),
    (config_app, "config"),
):
    app.add_typer(sub_app, name=name)
for commands in (backbone_commands, demo_commands):  # doctor, demo
    for command in commands.registered_commands:
        app.registered_commands.append(command)


def _moved(context: typer.Context) -> None:
    error_console.print(
        f"`visionloom vq {context.invoked_subcommand}` is now `visionloom retrieval vq "
        f"{context.invoked_subcommand}`; running that",
        highlight=False,
    )


# The old spelling of `retrieval vq`, hidden from the help; it says where the commands went.
app.add_typer(vq, name="vq", hidden=True, callback=_moved)

# Each system's config module, imported only when a config is shown.
CONFIG_LOADERS = {
    "retrieval": "visionloom.retrieval.config",
    "grounding": "visionloom.grounding.config",
    "pruning": "visionloom.pruning.config",
    "vlm": "visionloom.vlm.config",
}


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs too."),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads for torch. Default: OMP_NUM_THREADS if set, else the physical cores this "
        "process may use.",
    ),
) -> None:
    from visionloom.threads import configure_threads

    configure_threads(threads)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=error_console, show_path=False)],
    )
    if not verbose:
        # matplotlib reports every mathtext font it falls back from (log-scale tick labels), at WARNING.
        logging.getLogger("matplotlib").setLevel(logging.ERROR)
        # Through the environment, which transformers reads when (and if) a command imports it:
        # importing it here would cost every command, --help included, over half a second.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # imported already (the app called from Python): tell it
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()


@config_app.command("list")
def config_list() -> None:
    """Name every config, as SYSTEM/NAME."""
    from visionloom.config import config_names

    for system in CONFIG_LOADERS:
        names = config_names(system)
        console.print(f"{system}: " + ", ".join(f"{system}/{name}" for name in names), highlight=False)


@config_app.command("show")
def config_show(
    target: str = typer.Argument(
        ...,
        help="SYSTEM/NAME (e.g. retrieval/phase4; `visionloom config list` names them) or SYSTEM/FILE.yaml.",
    ),
    overrides: list[str] = set_option("train.steps=50"),
) -> None:
    """The resolved config as YAML, each key with what it allows and its default."""
    import importlib

    from visionloom.config import explain

    system, _, name = target.partition("/")
    if system not in CONFIG_LOADERS or not name:
        raise ValueError(
            f"config {target!r}: expected SYSTEM/NAME with SYSTEM one of {', '.join(CONFIG_LOADERS)}, "
            "e.g. retrieval/phase4"
        )
    config = importlib.import_module(CONFIG_LOADERS[system]).load_config(name, overrides)
    console.print(
        f"# {target}" + (f" with --set {' '.join(overrides)}" if overrides else ""), highlight=False
    )
    console.print("\n".join(explain(config)), highlight=False, markup=False)


if __name__ == "__main__":
    app()
