"""Person-retrieval data: the synthetic generator, the three benchmark readers, and `data check`."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from visionloom.cli import app
from visionloom.data.check import check_pedes
from visionloom.data.errors import DatasetFormatError
from visionloom.data.pedes import read_pedes
from visionloom.data.synth_pedes import generate


def test_synthetic_set_is_cuhk_format_with_disjoint_identity_splits(pedes_root):
    entries = json.loads((pedes_root / "reid_raw.json").read_text())
    assert len(entries) == 24
    assert {tuple(sorted(e)) for e in entries} == {("captions", "file_path", "id", "split")}
    assert min(e["id"] for e in entries) == 1  # CUHK's ids start at 1
    for entry in entries:
        assert len(entry["captions"]) == 2 and all(text.strip() for text in entry["captions"])
        with Image.open(pedes_root / "imgs" / entry["file_path"]) as image:
            assert (image.height, image.width) == (384, 128)
    ids_by_split = {s: {e["id"] for e in entries if e["split"] == s} for s in ("train", "val", "test")}
    assert all(ids_by_split.values())
    assert not ids_by_split["train"] & ids_by_split["test"]
    assert not ids_by_split["train"] & ids_by_split["val"]


def test_generator_is_deterministic_by_seed(tmp_path):
    generate(tmp_path / "a", 10, seed=1, images_per_identity=1, progress=False)
    generate(tmp_path / "b", 10, seed=1, images_per_identity=1, progress=False)
    generate(tmp_path / "c", 10, seed=2, images_per_identity=1, progress=False)
    a, b, c = ((tmp_path / d / "reid_raw.json").read_text() for d in "abc")
    assert a == b and a != c
    first = "imgs/synth/00001_0.png"
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()


def test_reader_remaps_training_ids_and_makes_every_caption_a_query(pedes_root):
    dataset = read_pedes(pedes_root)
    assert dataset.name == "cuhk-pedes"
    train = dataset["train"]
    assert sorted({im.pid for im in train.images}) == list(range(train.num_identities))
    pairs = train.pairs()
    assert len(pairs) == sum(len(im.captions) for im in train.images)
    captions, pids = dataset["test"].queries()
    assert len(captions) == len(pids) == 2 * len(dataset["test"].images)


def _write(root, filename, entries, image_key="file_path"):
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for entry in entries:
        Image.new("RGB", (128, 384), "gray").save(root / "imgs" / entry[image_key])
    (root / filename).write_text(json.dumps(entries))


def test_icfg_without_val_gets_val_carved_from_train_never_test(tmp_path):
    entries = [
        {
            "split": "train" if pid < 10 else "test",
            "captions": [f"person {pid}"],
            "file_path": f"{pid}.png",
            "id": pid,
        }
        for pid in range(14)
    ]
    _write(tmp_path, "ICFG-PEDES.json", entries)
    dataset = read_pedes(tmp_path)
    assert dataset.name == "icfg-pedes"
    test_ids = {im.pid for im in dataset["test"].images}
    val_files = {im.path.name for im in dataset["val"].images}
    assert test_ids == {10, 11, 12, 13}
    assert val_files == {"9.png"}  # the last 10% of the training identities
    assert "never the test split" in dataset["val"].notes[0]
    assert sorted({im.pid for im in dataset["train"].images}) == list(range(9))


def test_rstpreid_reads_img_path(tmp_path):
    entries = [
        {"split": split, "captions": ["a", "b"], "img_path": f"{i}.jpg", "id": i}
        for i, split in enumerate(["train", "train", "val", "test"])
    ]
    _write(tmp_path, "data_captions.json", entries, image_key="img_path")
    dataset = read_pedes(tmp_path)
    assert dataset.name == "rstpreid"
    assert [im.path.name for im in dataset["test"].images] == ["3.jpg"]


def test_reader_names_the_entry_that_lacks_a_field(tmp_path):
    (tmp_path / "reid_raw.json").write_text(json.dumps([{"split": "train", "captions": ["x"], "id": 1}]))
    with pytest.raises(DatasetFormatError, match="entry 0 lacks file_path"):
        read_pedes(tmp_path)


def test_data_check_reports_every_problem_with_entry_and_file(tmp_path):
    entries = [
        {"split": "train", "captions": ["a man"], "file_path": "ok.png", "id": 1},
        {"split": "train", "captions": ["a man"], "file_path": "missing.png", "id": 2},
        {"split": "train", "captions": ["a man"], "file_path": "broken.png", "id": 3},
        {"split": "train", "captions": ["", "fine"], "file_path": "empty_caption.png", "id": 4},
        {"split": "test", "captions": ["a man"], "file_path": "small.png", "id": 5},
        {"split": "test", "captions": [], "file_path": "no_captions.png", "id": 6},
        {"split": "test", "captions": ["x"], "file_path": "ok2.png", "id": 1},
    ]
    (tmp_path / "imgs").mkdir()
    for name in ("ok.png", "empty_caption.png", "no_captions.png", "ok2.png"):
        Image.new("RGB", (128, 384)).save(tmp_path / "imgs" / name)
    Image.new("RGB", (64, 100)).save(tmp_path / "imgs" / "small.png")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "reid_raw.json").write_text(json.dumps(entries))

    report = check_pedes(tmp_path)
    text = [str(p) for p in report.problems]
    assert report.name == "cuhk-pedes"
    assert any("entry 1: missing.png: image file missing" in t for t in text)
    assert any(t.startswith("entry 2: broken.png: unreadable image") for t in text)
    assert any("entry 3: empty_caption.png: caption 0 is empty" in t for t in text)
    assert any("entry 5: no_captions.png: no captions" in t for t in text)
    assert any("identity 2 has no usable image" in t for t in text)
    assert any("identity 3 has no usable image" in t for t in text)
    assert any("identity 1 is in splits ['test', 'train']" in t for t in text)
    assert len(report.problems) == 7  # a size of its own is not a problem: training resizes
    assert report.sizes.counts == {(384, 128): 4, (100, 64): 1}
    # Asked for one size, every other size is a problem.
    sized = check_pedes(tmp_path, expected_size=(384, 128))
    assert any(
        "entry 4: small.png: size 100x64" in str(p) and "expected 384x128" in str(p) for p in sized.problems
    )
    assert len(sized.problems) == 8

    result = CliRunner().invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert "7 problem(s)" in result.output


def test_data_check_accepts_mixed_sizes_as_released_sets_have_them_and_summarises_them(tmp_path):
    """CUHK-PEDES and RSTPReid mix images from several sources: sizes are summarised, not refused."""
    sizes = [(384, 128), (384, 128), (300, 110), (256, 96), (412, 150)]
    entries = [
        {"split": "train" if i < 4 else "test", "captions": ["a person"], "file_path": f"p{i}.jpg", "id": i}
        for i in range(len(sizes))
    ]
    (tmp_path / "imgs").mkdir()
    for i, (height, width) in enumerate(sizes):
        Image.new("RGB", (width, height)).save(tmp_path / "imgs" / f"p{i}.jpg")
    (tmp_path / "reid_raw.json").write_text(json.dumps(entries))
    report = check_pedes(tmp_path)
    assert report.problems == []
    line = report.sizes.describe()
    assert line.startswith("5 images in 4 size(s); height min/median/max 256/384/412, width 96/128/150")
    assert "most common: 384x128 (2)" in line
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "5 images in 4 size(s)" in result.output and "no problems" in result.output


def test_data_check_passes_a_clean_set_and_synth_cli_writes_one(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "synth-pedes", str(tmp_path), "--ids", "10", "--images-per-id", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--image-size", "384x128"])
    assert result.exit_code == 0, result.output
    assert "no problems" in result.output
