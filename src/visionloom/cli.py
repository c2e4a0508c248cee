"""The `visionloom` command: one entry point, one sub-command per job.

Bad input never shows a traceback: every command runs inside `one_line_errors`, which turns the
errors the project raises for bad files, entries and settings (`ValueError` and its kinds:
`ConfigError`, `DatasetFormatError`, `ImageTokenMismatch`; missing files; a locked run) into one
line naming the cause, exit status 2.
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
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


def one_line_errors(command: Callable) -> Callable:
    """Run `command`; an error about the user's input becomes one line on stderr and exit 2, and
    Ctrl-C during training says what was saved and how to continue (exit 130)."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        from visionloom.engine.interrupt import TrainingInterrupted

        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            # typer's own (it carries its own copy of click): shown by typer, not turned into our line.
            raise
        except TrainingInterrupted as stop:
            error_console.print(stop.message, highlight=False, soft_wrap=True)
            if stop.resume_from is not None:
                error_console.print(f"continue with: {resume_command()}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            # Ctrl-C outside the training loop (reading data, the final evaluation): the run keeps
            # every checkpoint it wrote, and --resume picks up from the newest (or just evaluates).
            from visionloom.engine.run import holds_a_run

            out = kwargs.get("out")
            if (
                "resume" in inspect.signature(command).parameters
                and out is not None
                and holds_a_run(Path(out))
            ):
                error_console.print(
                    f"interrupted; the run keeps its checkpoints. continue with: {resume_command()}",
                    highlight=False,
                    soft_wrap=True,
                )
            elif "resume" in inspect.signature(command).parameters:
                error_console.print(
                    "interrupted before the run started; nothing was written", highlight=False
                )
            else:
                error_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
        except Exception as error:
            if verbose_errors() and not is_user_error(error):
                raise  # --verbose: the whole traceback of what is not the user's input
            error_console.print(styled("red", "error:", f" {describe_error(error)}"))
            raise typer.Exit(2 if is_user_error(error) else 1) from None

    return guarded


def verbose_errors() -> bool:
    return logging.getLogger().isEnabledFor(logging.INFO)  # --verbose


def is_user_error(error: BaseException) -> bool:
    """An error of the user's input: a file, entry or setting (the project's errors are ValueErrors
    naming it), a file that cannot be read or written (missing, a folder where a file was expected,
    no space left), an image too large to open safely (PIL's DecompressionBombError, which is no
    OSError), input nested too deeply to parse, or more than memory holds."""
    bomb = getattr(sys.modules.get("PIL.Image"), "DecompressionBombError", ())
    return isinstance(error, (ValueError, OSError, RecursionError, MemoryError, *([bomb] if bomb else [])))


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

    def command(self, *args, **kwargs):
        register = super().command(*args, cls=kwargs.pop("cls", _Command), **kwargs)
        return lambda function: register(one_line_errors(function))


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


app = Commands(
    add_completion=False, no_args_is_help=True, help="Image tokens in vision-language models, done right."
)
preset_app = Commands(no_args_is_help=True, help="Tiny random-weight presets of each supported family.")
app.add_typer(preset_app, name="preset")
data_app = Commands(no_args_is_help=True, help="Data sets: check them, generate synthetic ones.")
app.add_typer(data_app, name="data")
vq_app = Commands(no_args_is_help=True, help="Phase 4's VQ image tokenizer and its offline code cache.")
app.add_typer(vq_app, name="vq")
retrieval_app = Commands(no_args_is_help=True, help="Text-based person retrieval: train, evaluate, search.")
app.add_typer(retrieval_app, name="retrieval")
ground_app = Commands(
    no_args_is_help=True, help="Referring segmentation from a frozen VLM's attention, refined by SAM."
)
app.add_typer(ground_app, name="ground")
prune_app = Commands(no_args_is_help=True, help="Vision-token pruning: accuracy kept, prefill saved.")
app.add_typer(prune_app, name="prune")
vlm_app = Commands(no_args_is_help=True, help="A tiny VLM that has learned the synthetic scenes.")
app.add_typer(vlm_app, name="vlm")
config_app = Commands(no_args_is_help=True, help="The configs each system ships, resolved and explained.")
app.add_typer(config_app, name="config")

# Each system's config loader, imported only when a config is shown.
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


@app.command()
def doctor(
    model: str = typer.Argument(..., help="A local checkpoint directory or a preset name."),
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
) -> None:
    """Report what the image-token layer does for MODEL and check it end to end."""
    import torch

    from visionloom.backbones.base import resolve_dtype
    from visionloom.backbones.doctor import run_doctor
    from visionloom.config import parse_size

    try:
        size = parse_size(image_size) if image_size else None
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    resolve_dtype(dtype, torch.device("cpu"))  # the one rule for dtype names, checked before loading
    report = run_doctor(model, size, native=native, dtype=dtype, device=device)
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
        console.print(table)
        if report.error:
            console.print(styled("red", "error:", f" {report.error}"))
        console.print(styled("green", "healthy") if report.ok else styled("red", "not healthy"))
    raise typer.Exit(0 if report.ok else 1)


@preset_app.command("list")
def preset_list() -> None:
    """Name every preset."""
    from visionloom.backbones.tiny import PRESETS

    for name, builder in PRESETS.items():
        console.print(styled("bold", name, f"  {(builder.__doc__ or '').strip().splitlines()[0]}"))


@preset_app.command("save")
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


def _size(value: str | None, hint: str) -> tuple[int, int] | None:
    from visionloom.config import parse_size

    try:
        return parse_size(value) if value else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=hint) from None


# -------------------------------------------------------------------------------------- config
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


# ---------------------------------------------------------------------------------------- data
@data_app.command("check")
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

    expected = _size(image_size, "--image-size")
    report = check_pedes(root, expected, progress=lambda it: track(it, description="checking entries"))
    name, problems = report.name, report.problems
    console.print(f"image sizes: {report.sizes.describe()}", highlight=False, soft_wrap=True)
    for problem in problems:
        console.print(styled("red", "problem", f" {problem}"), highlight=False)
    if problems:
        console.print(styled("red", f"{len(problems)} problem(s)", f" in {root} ({name})"))
        raise typer.Exit(1)
    console.print(styled("green", "ok", f" {root} ({name}): no problems"))


@data_app.command("synth-pedes")
def data_synth_pedes(
    out: Path = typer.Argument(..., help="Directory to write (CUHK-PEDES layout)."),
    ids: int = typer.Option(300, "--ids", help="Number of identities (70% train, 10% val, 20% test)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the drawing: the same seed, the same data set."),
    images_per_id: int = typer.Option(4, "--images-per-id", min=1, help="Images of each identity."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into OUT though it holds files."),
) -> None:
    """Draw a synthetic pedestrian data set: 384x128 images, two captions each."""
    from visionloom.data.synth_pedes import generate
    from visionloom.engine.run import refuse_to_replace

    refuse_to_replace(out, "a synthetic data set", overwrite=overwrite)
    try:
        annotation = generate(out, ids, seed=seed, images_per_identity=images_per_id)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--ids") from None
    console.print(f"wrote {ids * images_per_id} images of {ids} identities; annotations in {annotation}")


@data_app.command("synth-scenes")
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


# ---------------------------------------------------------------------------------------- vlm
@vlm_app.command("pretrain")
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
    _print_metrics(f"{family}: answer accuracy on held-out scenes (%)", report["test_accuracy"])
    _print_metrics("the same model with random weights (%)", report["test_accuracy_random_weights"])
    console.print(
        f"saved to {out} ({report['train_seconds']:.0f} s of training); report in {out / 'pretrain.json'}"
    )


# ---------------------------------------------------------------------------------------- ground
@ground_app.command("train")
def ground_train(
    config: str = typer.Argument(..., help="A name under configs/grounding/ or a YAML path."),
    data: Path = typer.Option(
        ..., "--data", help="RefCOCO-style root: refs.json (or refs(unc).p) + instances.json."
    ),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    vlm: str | None = typer.Option(
        None, "--vlm", help="Frozen VLM: a checkpoint directory or a preset name."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in OUT."),
    overrides: list[str] = set_option("train.steps=100"),
) -> None:
    """Train the mask head, text projection and SAM decoder on a frozen VLM; select on val, test once."""
    from visionloom.grounding.config import load_config
    from visionloom.grounding.train import train_grounding

    settings = load_config(config, overrides)
    if vlm is not None:
        settings.vlm = vlm
    summary = train_grounding(settings, data, out, resume=resume, overwrite=overwrite)
    _print_split_metrics(
        f"{settings.name}, % (weights of step {summary['selected']['step']}, selected on val)",
        {split: summary[split] for split in summary["evaluated"]},
    )
    console.print(f"images: {summary['image_dir']}\nrun: {out}", highlight=False)


@ground_app.command("eval")
def ground_eval(
    checkpoint: Path = typer.Argument(..., help="A `ground train` run directory."),
    data: Path = typer.Option(..., "--data", help="The data root the run was trained on (or another)."),
    split: str | None = evaluation_split_option(),
    json_out: Path | None = metrics_json_option(),
) -> None:
    """cIoU, mIoU and P@0.5 of the coarse and the SAM-refined masks, per split."""
    from visionloom.grounding.evaluate import evaluate_run, read_run_config

    evaluation = evaluate_run(checkpoint, data, split)
    _print_split_metrics(f"{read_run_config(checkpoint).name}, %", evaluation)
    if json_out is not None:
        json_out.write_text(json.dumps(evaluation, indent=1))


@ground_app.command("baselines")
def ground_baselines(
    data: Path = typer.Option(
        ..., "--data", help="RefCOCO-style root: refs.json (or refs(unc).p) + instances.json."
    ),
    split: str | None = evaluation_split_option(),
    json_out: Path | None = metrics_json_option(),
) -> None:
    """cIoU, mIoU and P@0.5 of masks that use neither image nor expression (a centred box of the mean
    object size; the training masks' mean): what a VLM's attention has to beat."""
    from visionloom.data.refcoco import evaluation_splits, read_refcoco
    from visionloom.grounding.baselines import evaluate_baselines, fit_priors

    by_split: dict[str, list] = {}
    for sample in read_refcoco(data):
        by_split.setdefault(sample.split, []).append(sample)
    if split is not None and split not in by_split:
        raise typer.BadParameter(f"{split!r}; {data} has {', '.join(sorted(by_split))}", param_hint="--split")
    train = by_split.get("train", [])
    priors = fit_priors(train)  # once, for every split scored
    results = {
        name: evaluate_baselines(priors, by_split[name])
        for name in ([split] if split else evaluation_splits(by_split))
    }
    table = Table(
        title=f"baselines without image or expression (priors fitted on {len(train)} training samples), %"
    )
    table.add_column("split")
    table.add_column("baseline")
    for column in ("cIoU", "mIoU", "P@0.5"):
        table.add_column(column, justify="right")
    for name, baselines in results.items():
        for baseline, metrics in baselines.items():
            table.add_row(name, baseline, *(f"{metrics[key]:.2f}" for key in ("cIoU", "mIoU", "P@0.5")))
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=1))


@ground_app.command("show")
def ground_show(
    checkpoint: Path = typer.Argument(..., help="A `ground train` run directory."),
    data: Path = typer.Option(..., "--data", help="The scenes or RefCOCO root the run was trained on."),
    n: int = typer.Option(8, "--n", help="How many samples."),
    split: str = typer.Option("val", "--split", help="Which split's samples (val, test, testA, testB, ...)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the PNGs (default CHECKPOINT/show)."),
) -> None:
    """A PNG per sample: image, expression, attention map, coarse and refined masks."""
    from visionloom.grounding.build import read_samples
    from visionloom.grounding.evaluate import load_trained, read_run_config
    from visionloom.grounding.show import show

    samples = read_samples(read_run_config(checkpoint), data, split)[:n]
    model, _, features = load_trained(checkpoint, samples=samples, split=split)
    paths = show(model, samples, features, out or checkpoint / "show")
    console.print(f"wrote {len(paths)} images to {paths[0].parent}")


# ---------------------------------------------------------------------------------------- prune
@prune_app.command("eval")
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
    vlm: str | None = typer.Option(None, "--vlm", help="The VLM: a checkpoint directory."),
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


# ---------------------------------------------------------------------------------------- vq
@vq_app.command("fit")
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


@vq_app.command("cache")
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


# ---------------------------------------------------------------------------------------- retrieval
@retrieval_app.command("train")
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
        _print_metrics(
            f"{experiment.name}: test split (weights selected on val at step {summary['selected']['step']})",
            summary["test"],
        )


@retrieval_app.command("compare")
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


def _print_split_metrics(title: str, evaluation: dict[str, dict[str, float]]) -> None:
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


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    table = Table(title=title)
    for key in metrics:
        table.add_column(key, justify="right")
    table.add_row(*(f"{value:.2f}" for value in metrics.values()))
    console.print(table)


@retrieval_app.command("eval")
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
    _print_metrics(f"{checkpoint} on {data} ({split})", metrics)
    target = out or checkpoint / f"eval_{split}.json"
    target.write_text(json.dumps(metrics, indent=1))
    console.print(f"wrote {target}")


@retrieval_app.command("search")
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


# ---------------------------------------------------------------------------------------- demo
@app.command()
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
    out: Path | None = typer.Option(None, "--out", help="Report folder (default runs/demo-<time>)."),
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
    from visionloom.demo import DEFAULT, QUICK, parse_phases, run_demo
    from visionloom.engine.interrupt import TrainingInterrupted

    defaults = QUICK if quick else DEFAULT
    try:
        names = parse_phases(defaults["phases"] if phases is None else phases)
        chosen_reference = None if reference == "none" else parse_phases(reference)[0]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--phases/--reference") from None
    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    try:
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
    except KeyboardInterrupt as stop:
        if isinstance(stop, TrainingInterrupted):
            error_console.print(stop.message, highlight=False, soft_wrap=True)
        arguments = [a for a in sys.argv[1:] if a != "--out"]
        if "--out" in sys.argv:  # drop the old value with the flag; the folder is given below
            del arguments[sys.argv[1:].index("--out")]
        again = shlex.join(["visionloom", *arguments, "--out", str(out)])
        error_console.print(
            f"demo interrupted; {out} keeps the data and every finished phase or checkpoint. "
            f"continue with: {again}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None


if __name__ == "__main__":
    app()
