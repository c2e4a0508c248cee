"""`visionloom vlm pretrain`: teach a tiny VLM of a real class to see the synthetic scenes.

Attention of a randomly initialised model carries no grounding, so the grounding and pruning
systems need a VLM that has learned something. This trains a tiny preset (LLaVA or Qwen2.5-VL,
every weight trainable, from random) on the scenes' captions, questions and "locate <referring
expression>" -> location, and saves it as a normal checkpoint directory (`save_pretrained`,
processor included) that `backbones.load` reads back.

The language-model loss covers every text token after the image, the question included, not
only the answer. Predicting "circle" after "locate the red" needs a look at the red objects,
so the expression's own tokens learn to attend to what they name. In "locate" the location
follows the expression's last token directly, so that token has to find the referent. That
attention is what the grounding head reads, with the same prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_model
from torch.utils.data import DataLoader

from visionloom.data.scenes import SceneCells, read_scene_folder, read_scene_splits, require_readable
from visionloom.engine.experiment import Setup, run_experiment
from visionloom.engine.run import fingerprint
from visionloom.engine.samplers import Items, RandomBatches
from visionloom.vlm.answers import AnswerCollate
from visionloom.vlm.build import build_vlm
from visionloom.vlm.config import FAMILY_PRESETS, PretrainConfig
from visionloom.vlm.evaluate import answer_accuracy
from visionloom.vlm.model import CELL_LAYOUT, AnswerModel

CELL_HEAD_FILE = "cell_head.safetensors"


def save_cell_head(model: AnswerModel, path: Path) -> None:
    """The per-token warm-up head, beside the checkpoint (not inside it: the checkpoint stays exactly
    the transformers model). It reads an image token's embedding and gives colour, shape and place
    logits (sizes in the metadata), so it can probe what a VLM's image tokens carry."""
    head = model.cell_head
    metadata = {
        "in_features": str(head.in_features),
        "out_features": str(head.out_features),
        "layout": CELL_LAYOUT,
    }
    save_model(head, str(path), metadata=metadata)


def pretrain(
    root: str | Path,
    out: str | Path,
    config: PretrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train from random on the train split, select on val, save to `out`; report test accuracy.

    An `out` that already holds files is refused unless `resume` or `overwrite` is given.
    """
    if config.family not in FAMILY_PRESETS:
        raise ValueError(f"--family {config.family!r}: choose one of {', '.join(FAMILY_PRESETS)}")
    out = Path(out)
    root = Path(root)
    texts: dict[str, list] = {}

    def prepare(_accelerator) -> Setup:
        # The data first: a run that cannot read it must leave nothing that looks like a run.
        folder = read_scene_folder(root)
        texts.update(read_scene_splits(folder, ("train", "val", "test")))
        require_readable([t.image_path for split in texts.values() for t in split], root)
        adapter = build_vlm(config)
        adapter.model.train()
        sampler = RandomBatches(len(texts["train"]), config.train.batch_size, config.train.seed)
        cells = SceneCells(folder) if config.cell_weight else None
        return Setup(
            model=AnswerModel(adapter, config.cell_weight),
            # With train.num_workers, the processor and the cell labels (a third of a Qwen2.5-VL step on
            # a CPU) run in worker processes beside the step; the batches are the same either way.
            loader=DataLoader(
                Items(texts["train"]),
                batch_sampler=sampler,
                collate_fn=AnswerCollate(adapter, cells),
                num_workers=config.train.num_workers,
                persistent_workers=config.train.num_workers > 0,
            ),
            # The trainer switches the model to eval and back; the adapter is the model's own.
            validate=lambda _model: answer_accuracy(adapter, texts["val"]),
            select_key="all",
            data_fingerprint=fingerprint(sorted(root.glob("*.json"))),
            evaluate=lambda _best: {
                "test": answer_accuracy(adapter, texts["test"], progress=progress, by_kind=True)
            },
            description={"family": config.family},
        )

    def save(setup: Setup, summary: dict) -> dict:
        """The selected weights (finish_run loaded them) as OUT, a checkpoint, and OUT/pretrain.json."""
        model = setup.model
        model.adapter.save_pretrained(out)
        if model.cell_head is not None:
            save_cell_head(model, out / CELL_HEAD_FILE)
        report = {
            "family": config.family,
            "steps": summary["steps"],
            "train_seconds": summary["train_seconds"],
            "selected": summary["selected"],
            "test_accuracy": summary["test"],
            "test_accuracy_random_weights": answer_accuracy(build_vlm(config), texts["test"]),
        }
        (out / "pretrain.json").write_text(json.dumps(report, indent=1))
        return report

    return run_experiment(
        config,
        root,
        out / "run",
        prepare,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        lock_dir=out,
        after=save,
    )
