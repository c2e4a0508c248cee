"""Evaluator, VQ cache keys, `retrieval eval` / `search` commands on a trained run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from tests.helpers import small_config
from visionloom.cli import app
from visionloom.data.pedes import read_pedes
from visionloom.retrieval.evaluate import encode_gallery, encode_queries, evaluate_split
from visionloom.retrieval.metrics import retrieval_metrics, retrieval_metrics_from_features
from visionloom.retrieval.train import load_trained, train_retrieval
from visionloom.retrieval.vq import cache_path, tokenizer_hash


def test_metrics_from_features_equal_metrics_on_the_full_matrix():
    generator = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(300, 16, generator=generator), dim=-1)
    gallery = F.normalize(torch.randn(120, 16, generator=generator), dim=-1)
    gallery_pids = torch.arange(120) // 3
    query_pids = torch.randint(0, 40, (300,), generator=generator)
    full = retrieval_metrics(queries @ gallery.t(), query_pids, gallery_pids)
    chunked = retrieval_metrics_from_features(
        queries, gallery, query_pids, gallery_pids, memory_budget_bytes=4096
    )
    # Hit counts are exact; mAP and mINP are float64 sums added in another order (per chunk).
    assert all(full[k] == chunked[k] for k in ("R1", "R5", "R10"))
    assert all(chunked[k] == pytest.approx(full[k], rel=1e-12) for k in ("mAP", "mINP"))


def test_vq_cache_is_keyed_by_the_tokenizer(pedes_root, vq_dir):
    digest = tokenizer_hash(vq_dir)
    path = cache_path(pedes_root, digest)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["tokenizer_hash"] == digest
        codes = handle.get_tensor("codes")
    train = read_pedes(pedes_root)["train"]
    assert codes.shape[:2] == (len(train.images), 2)
    assert tokenizer_hash(vq_dir) == digest  # stable


def test_eval_and_search_commands_on_a_trained_run(pedes_root, tmp_path):
    run = tmp_path / "run"
    summary = train_retrieval(small_config("baseline"), pedes_root, run, progress=False)
    model = load_trained(run)
    test = read_pedes(pedes_root)["test"]
    assert evaluate_split(model, test) == summary["test"]  # the selected weights, loaded again

    runner = CliRunner()
    result = runner.invoke(app, ["retrieval", "eval", str(run), "--data", str(pedes_root)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "eval_test.json").read_text()) == summary["test"]

    query = test.images[0].captions[0]
    out = tmp_path / "grid.png"
    result = runner.invoke(
        app,
        ["retrieval", "search", str(run), query, "--data", str(pedes_root), "--top", "3", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("#") >= 3
    with Image.open(out) as grid:
        assert grid.width > 3 * 64
    # the top hit printed is the best-scoring gallery image
    gallery = encode_gallery(model, test)
    best = int((encode_queries(model, [query]) @ gallery.t()).argmax())
    assert str(test.images[best].path) in result.output.split("#1")[1].splitlines()[0]


def test_rstpreid_as_released_with_mixed_image_sizes_checks_trains_and_evaluates(pedes_root, tmp_path):
    """RSTPReid's data_captions.json (img_path), images of several sizes as the release mixes them."""
    from visionloom.data.check import check_pedes

    root = tmp_path / "RSTPReid"
    (root / "imgs").mkdir(parents=True)
    entries = json.loads((pedes_root / "reid_raw.json").read_text())
    sizes = [(384, 128), (256, 96), (412, 150), (300, 110)]
    released = []
    for index, entry in enumerate(entries):
        height, width = sizes[index % len(sizes)]
        name = f"{entry['id']:04d}_c{index}.jpg"
        with Image.open(pedes_root / "imgs" / entry["file_path"]) as picture:
            picture.convert("RGB").resize((width, height)).save(root / "imgs" / name)
        released.append(
            {"id": entry["id"], "img_path": name, "captions": entry["captions"], "split": entry["split"]}
        )
    (root / "data_captions.json").write_text(json.dumps(released))

    report = check_pedes(root)
    assert report.name == "rstpreid" and report.problems == []
    assert len(report.sizes.counts) == len(sizes)
    summary = train_retrieval(small_config("baseline"), root, tmp_path / "run", progress=False)
    assert set(summary["test"]) >= {"R1", "R5", "R10", "mAP", "mINP"}
    assert summary["selected"]["step"] > 0
