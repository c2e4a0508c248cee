"""What every `visionloom` command shares: one line for each error, flags shown as switches, the
--set option, and the consoles and tables commands print with.

Bad input never shows a traceback: every command runs inside `one_line_errors`, which turns the
errors the project raises for bad files, entries and settings (`ValueError` and its kinds:
`ConfigError`, `DatasetFormatError`, `ImageTokenMismatch`, `ImageReadError`) and the file
system's (`OSError`: missing files, a full disk) into one line naming the cause, exit status 2.
Each system's commands live beside it (`<system>/cli.py`); `visionloom/cli.py` joins them.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text


def _console(stderr: bool = False) -> Console:
    # Lines are never broken at the terminal's width (soft_wrap): a path or a verdict split in two
    # cannot be copied or searched for. Off a terminal (a pipe, a log file, a test) nothing is fitted
    # to a width at all, so what a program or a person reads does not depend on COLUMNS.
    # No markup: messages carry paths, keys and captions from the user, and "[v2]" in a folder's
    # name would be read as a style and vanish. Colour comes from `styled` (rich Text) instead.
    on_terminal = Console(stderr=stderr).is_terminal
    return Console(
        stderr=stderr, soft_wrap=True, markup=False, width=None if on_terminal else OFF_TERMINAL_WIDTH
    )


def styled(style: str, head: str, rest: str = "") -> Text:
    """`head` in `style`, then `rest` as it is (never read as markup)."""
    return Text.assemble((head, style), rest)


OFF_TERMINAL_WIDTH = 200
console = _console()
error_console = _console(stderr=True)


def resume_command() -> str:
    """The command line that continues this run: the same arguments with --resume."""
    arguments = [a for a in sys.argv[1:] if a != "--overwrite"]
    return shlex.join(["visionloom", *arguments, *([] if "--resume" in arguments else ["--resume"])])


def one_line_errors(command: Callable, on_interrupt: Callable[[dict], str] | None = None) -> Callable:
    """Run `command`; an error about the user's input becomes one line on stderr and exit 2, and
    Ctrl-C says what was saved and how to continue (exit 130): `on_interrupt(arguments)` gives
    that line for commands that continue otherwise than with --resume (the demo)."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        from visionloom.engine.interrupt import TrainingInterrupted

        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            # typer's own (it carries its own copy of click): shown by typer, not turned into the one-line form.
            raise
        except KeyboardInterrupt as stop:
            if isinstance(stop, TrainingInterrupted):
                error_console.print(stop.message, highlight=False, soft_wrap=True)
            line = _after_interrupt(command, kwargs, stop, on_interrupt)
            if line:
                error_console.print(line, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Exception as error:
            if verbose_errors() and not is_user_error(error):
                raise  # --verbose: the whole traceback of what is not the user's input
            error_console.print(styled("red", "error:", f" {describe_error(error)}"))
            raise typer.Exit(2 if is_user_error(error) else 1) from None

    return guarded


def _after_interrupt(command: Callable, arguments: dict, stop: KeyboardInterrupt, on_interrupt) -> str:
    """The line after Ctrl-C: how to continue, or that there is nothing to continue."""
    from visionloom.engine.interrupt import TrainingInterrupted
    from visionloom.engine.run import holds_a_run

    if on_interrupt is not None:
        return on_interrupt(arguments)
    if isinstance(stop, TrainingInterrupted):
        return f"continue with: {resume_command()}" if stop.resume_from is not None else ""
    out = arguments.get("out")
    if "resume" not in inspect.signature(command).parameters:
        return "interrupted"
    if out is not None and holds_a_run(Path(out)):
        # Outside the training loop (reading data, the final evaluation): the run keeps every
        # checkpoint it wrote, and --resume picks up from the newest (or just evaluates).
        return f"interrupted; the run keeps its checkpoints. continue with: {resume_command()}"
    return "interrupted before the run started; nothing was written"


def verbose_errors() -> bool:
    return logging.getLogger().isEnabledFor(logging.INFO)  # --verbose


def is_user_error(error: BaseException) -> bool:
    """An error of the user's input: a file, entry or setting (the project's errors are ValueErrors
    naming it, images that cannot be opened safely among them: `images.read_rgb`), a file that
    cannot be read or written (missing, a folder where a file was expected, no space left), input
    nested too deeply to parse, or more than memory holds."""
    return isinstance(error, (ValueError, OSError, RecursionError, MemoryError))


def describe_error(error: BaseException) -> str:
    """One line for an error: the user's input or the file system named, or an unexpected error
    said to be one."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        free = ""
        if error.errno == errno.ENOSPC and error.filename:
            free = f" ({shutil.disk_usage(Path(error.filename).parent).free / 2**20:.0f} MiB free there)"
        return f"{error.strerror}{where}{free}"
    if isinstance(error, RecursionError):
        return "input nested too deeply to read (a JSON or YAML file of thousands of levels?)"
    if isinstance(error, MemoryError):
        return "out of memory; nothing was finished. Is an input far larger than expected?"
    message = str(error).strip() or type(error).__name__
    if not is_user_error(error):
        return (
            f"unexpected {type(error).__name__}: {message}. Rerun with --verbose to see where it "
            "happened, and please report it"
        )
    return message


def _switches_without_metavar(params: list) -> list:
    # typer 0.29 shows every flag as taking a value ("--resume <bool>"); a flag takes none. (typer
    # carries its own copy of click, so the parameters are not `click.Option` instances.)
    # It also prints a list argument's Python type ("<list[str]>") beside its metavar; the
    # metavar ("CONFIG...") says it all.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        if param.param_type_name == "argument" and param.nargs != 1 and param.metavar:
            param.display_type_rich = lambda ctx: None
    return params


class _Command(typer.core.TyperCommand):
    def get_params(self, ctx) -> list:
        return _switches_without_metavar(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx) -> list:
        return _switches_without_metavar(super().get_params(ctx))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # typer draws a usage error (a bad option value) in a panel as wide as the terminal, which
        # breaks the message, and the option it names, across lines at a narrow width. Its main
        # loop without rich markup prints click's plain form instead: the message on one line.
        return typer.core._main(
            self,
            args=args,
            prog_name=prog_name,
            complete_var=complete_var,
            standalone_mode=standalone_mode,
            rich_markup_mode=None,
            **extra,
        )


class Commands(typer.Typer):
    """A typer app whose every command runs inside `one_line_errors` and whose help shows flags
    as the switches they are."""

    def __init__(self, **kwargs):
        super().__init__(cls=_Group, **kwargs)

    def command(self, *args, on_interrupt: Callable[[dict], str] | None = None, **kwargs):
        register = super().command(*args, cls=kwargs.pop("cls", _Command), **kwargs)
        return lambda function: register(one_line_errors(function, on_interrupt))


def set_option(example: str):
    """The repeatable --set KEY=VALUE option of every command that reads a config."""
    return typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help=f"Override a config value, e.g. {example}; repeatable. `visionloom config show` lists the keys.",
    )


def evaluation_split_option():
    """--split of the grounding evaluations: one split, or every evaluation split the data set has."""
    return typer.Option(
        None,
        "--split",
        help="One split; default every evaluation split the data set has (val, test/testA/testB).",
    )


def metrics_json_option():
    return typer.Option(None, "--json", help="Also write the metrics here.")


def parse_size_option(value: str | None, hint: str) -> tuple[int, int] | None:
    from visionloom.config import parse_size

    try:
        return parse_size(value) if value else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=hint) from None


def print_split_metrics(title: str, evaluation: dict[str, dict[str, float]]) -> None:
    """One row per split (as F-LMM's tables read), cIoU, mIoU and P@0.5 of each mask kind."""
    table = Table(title=title)
    table.add_column("split")
    kinds = [kind for kind in ("coarse", "refined") if any(f"{kind}_cIoU" in m for m in evaluation.values())]
    names = ("cIoU", "mIoU", "P@0.5")
    for kind in kinds:
        for name in names:
            table.add_column(f"{kind} {name}", justify="right")
    for split, metrics in evaluation.items():
        table.add_row(split, *(f"{metrics[f'{kind}_{name}']:.2f}" for kind in kinds for name in names))
    console.print(table)


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    table = Table(title=title)
    for key in metrics:
        table.add_column(key, justify="right")
    table.add_row(*(f"{value:.2f}" for value in metrics.values()))
    console.print(table)
