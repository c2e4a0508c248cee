"""`visionloom vlm pretrain`, `vlm accuracy` and `vlm compare`: the scene VLM that grounding and pruning evaluate."""

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
    tasks = {task: value for task, value in report["test_accuracy"].items() if ":" not in task}
    print_metrics(f"{family}: answer accuracy on held-out scenes (%)", tasks)
    print_metrics("the same model with random weights (%)", report["test_accuracy_random_weights"])
    console.print(
        f"saved to {out} ({report['train_seconds']:.0f} s of training); report in {out / 'pretrain.json'}, "
        f"accuracy per kind of question there and from `visionloom vlm accuracy {out} --data {data}`"
    )


@vlm.command("accuracy")
def vlm_accuracy(
    checkpoint: str = typer.Argument(
        ..., help="A scene VLM (vlm pretrain's OUT) or any checkpoint it loads."
    ),
    data: Path = typer.Option(..., "--data", help="A synth-scenes directory."),
    split: str = typer.Option("val", "--split", help="train | val | test"),
) -> None:
    """Exact-match accuracy per task and per kind of question on one split: what the VLM reads
    from its image tokens (colour, shape, count, location) and what it does not."""
    from visionloom.backbones import load
    from visionloom.data.scenes import read_scene_texts
    from visionloom.vlm.evaluate import answer_accuracy

    texts = read_scene_texts(data, split)
    adapter = load(checkpoint)
    adapter.model.eval()
    accuracy = answer_accuracy(adapter, texts, progress=True, by_kind=True)
    from rich.table import Table

    table = Table(title=f"{checkpoint}: exact-match accuracy on {split}")
    for column in ("task", "texts", "accuracy %"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, value in accuracy.items():
        texts_of_task = sum(task in ("all", t.task, t.task.split(":")[0]) for t in texts)
        table.add_row(task, str(texts_of_task), f"{value:.1f}")
    console.print(table)


@vlm.command("compare")
def vlm_compare(
    configs: list[str] = typer.Argument(
        ..., metavar="CONFIG", help="Configs under configs/vlm (llava, qwen2.5-vl) or YAML paths."
    ),
    data: Path = typer.Option(..., "--data", help="A synth-scenes directory."),
    out: Path = typer.Option(..., "--out", help="Report folder; seed K pretrains into OUT/CONFIG/seedK."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per config: seed = train.seed = 0..N-1."),
    overrides: list[str] = set_option("train.steps=1000"),
) -> None:
    """Pretrain each config with N seeds; held-out accuracy per seed, mean ± std, and each seed's
    validation where-accuracy by step. Rerun with the same OUT to continue."""
    from visionloom.engine.compare import make_entries
    from visionloom.vlm.compare import run_comparison

    run_comparison(
        make_entries(configs),
        data,
        out,
        seeds=seeds,
        common_overrides=overrides,
        say=lambda line: console.print(line, highlight=False),
    )
    console.print((out / "compare.md").read_text(), highlight=False, markup=False)
    console.print(f"wrote {out}/compare.json, compare.md, results.json, compare.png")
