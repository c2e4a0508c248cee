"""visionloom as an lmms-eval model: `lmms-eval --model visionloom ... --tasks pope` runs end to
end offline on a tiny preset and a tiny local copy of the task's data set, and its answers are the
ones `prune eval` generates for the same questions with the same pruner.

lmms-eval loads a task's data with `datasets.load_dataset(dataset_path)`, which takes a local
folder of that name before the hub: the copy sits under the working directory at the task's
`dataset_path` (lmms-lab/POPE's layout, `data/test-*.parquet`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import Dataset
from PIL import Image

from tests.pruning.test_parquet_benchmarks import POPE_FEATURES
from visionloom.backbones.tiny import build_preset
from visionloom.pruning.benchmarks.pope import SUBSETS
from visionloom.pruning.config import load_config
from visionloom.pruning.evaluate import evaluate_pruning

pytestmark = pytest.mark.slow

LMMS_EVAL = Path(sys.executable).parent / "lmms-eval"
NEW_TOKENS = 128  # lmms-eval's pope task asks for 128 new tokens


def pope_dataset_path() -> str:
    """Where lmms-eval's own pope task reads its data (its yaml's dataset_path)."""
    import lmms_eval

    task = Path(lmms_eval.__file__).parent / "tasks" / "pope" / "pope.yaml"
    lines = [line for line in task.read_text().splitlines() if "!function" not in line]
    return yaml.safe_load("\n".join(lines))["dataset_path"]


def write_pope_copy(folder: Path) -> None:
    """Nine questions, three per subset, each with its own image, as lmms-lab/POPE's shards."""
    rows = []
    for index in range(9):
        buffer = io.BytesIO()
        pixels = np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        rows.append(
            {
                "id": str(index),
                "question_id": str(index + 1),
                "question": f"Is there a {['cat', 'dog', 'car'][index % 3]} in the image?",
                "answer": "yes" if index % 2 else "no",
                "image_source": f"COCO_val2014_{index:012d}",
                "image": {"bytes": buffer.getvalue(), "path": None},
                "category": SUBSETS[index // 3],
            }
        )
    (folder / "data").mkdir(parents=True)
    Dataset.from_list(rows, features=POPE_FEATURES).to_parquet(
        str(folder / "data" / "test-00000-of-00001.parquet")
    )


def test_lmms_eval_runs_visionloom_with_fastv_on_pope_and_answers_as_prune_eval(tmp_path):
    work = tmp_path / "work"
    data = work / pope_dataset_path()
    write_pope_copy(data)
    vlm = tmp_path / "vlm"
    build_preset("tiny-llava").save_pretrained(vlm)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
    }
    model_args = f"pretrained={vlm},pruner=fastv,keep_ratio=0.5,text_layer=0,prompt=plain"
    done = subprocess.run(
        [str(LMMS_EVAL), "--model", "visionloom", "--model_args", model_args, "--tasks", "pope"]
        + ["--batch_size", "1", "--output_path", str(tmp_path / "out"), "--log_samples"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pope_accuracy" in done.stdout
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("*samples_pope.jsonl")).open()]
    theirs = {sample["pope_accuracy"]["question_id"]: sample["filtered_resps"] for sample in samples}
    assert len(theirs) == 9

    ours = {}
    for subset in SUBSETS:
        settings = load_config(
            "pope",
            [
                f"vlm={vlm}",
                "pruners=[text-attention]",
                "keep_ratios=[1.0, 0.5]",
                "text_layer=0",
                "prompt=plain",
            ]
            + [f"subset={subset}", f"max_new_tokens={NEW_TOKENS}", "batch_size=1"],
        )
        out = tmp_path / f"prune-{subset}"
        evaluate_pruning(settings, data, out, progress=False)
        for line in (out / "answers" / "text-attention-0.5.jsonl").read_text().splitlines():
            answer = json.loads(line)
            ours[answer["question_id"]] = answer["text"]
    assert {key: value.strip() for key, value in theirs.items()} == ours
