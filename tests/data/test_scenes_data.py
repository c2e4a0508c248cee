"""Synthetic scenes and the RefCOCO-style readers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from visionloom.data.errors import DatasetFormatError
from visionloom.data.refcoco import decode_segmentation, read_refcoco
from visionloom.data.synth_scenes import generate, location_words


def test_same_seed_same_scenes_other_seed_others(scenes_root, tmp_path):
    generate(tmp_path / "again", scenes=30, seed=5, progress=False)
    generate(tmp_path / "other", scenes=30, seed=6, progress=False)
    original = (scenes_root / "refs.json").read_text()
    assert (tmp_path / "again" / "refs.json").read_text() == original
    assert (tmp_path / "again" / "images" / "scene_00003.png").read_bytes() == (
        scenes_root / "images" / "scene_00003.png"
    ).read_bytes()
    assert (tmp_path / "other" / "refs.json").read_text() != original


def test_every_sample_has_its_mask_box_and_split(scenes_root):
    samples = read_refcoco(scenes_root)
    assert {s.split for s in samples} == {"train", "val", "test"}
    by_image = {}
    for sample in samples:
        by_image.setdefault(sample.image_id, set()).add(sample.split)
        mask = sample.mask()
        assert mask.shape == (224, 224) and mask.any(), sample.expression
        ys, xs = np.nonzero(mask)
        assert sample.box == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert sample.expression.startswith("the ")
    assert all(len(splits) == 1 for splits in by_image.values())  # images never cross splits


def test_expressions_single_out_their_object(scenes_root):
    """An expression naming colour and shape only may not fit two objects of the scene."""
    instances = json.loads((scenes_root / "instances.json").read_text())
    shapes = {c["id"]: c["name"] for c in instances["categories"]}
    per_image: dict[int, list[str]] = {}
    for annotation in instances["annotations"]:
        per_image.setdefault(annotation["image_id"], []).append(shapes[annotation["category_id"]])
    for sample in read_refcoco(scenes_root):
        words = sample.expression.split()
        if len(words) == 2:  # "the circle": the only circle
            assert per_image[sample.image_id].count(words[1]) == 1, sample.expression


def test_location_words_are_thirds_of_the_image():
    assert location_words((10, 10), 224) == "top left"
    assert location_words((112, 112), 224) == "center"
    assert location_words((200, 112), 224) == "right"
    assert location_words((112, 220), 224) == "bottom"


def _write_refcoco(root, refs_name="refs(unc).json", segmentation=None, image_dir=None):
    root.mkdir(parents=True, exist_ok=True)
    image_dir = image_dir or root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 20)).save(image_dir / "COCO_train2014_000000000001.jpg")
    refs = [
        {
            "ref_id": 7,
            "ann_id": 70,
            "image_id": 1,
            "split": "testA",
            "sentences": [{"sent_id": 1, "sent": "man on the left"}, {"sent_id": 2, "sent": "left guy"}],
        }
    ]
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 20, "width": 30}],
        "annotations": [
            {
                "id": 70,
                "image_id": 1,
                "bbox": [2, 3, 10, 5],
                "segmentation": segmentation or [[2, 3, 12, 3, 12, 8, 2, 8]],
                "category_id": 1,
            }
        ],
    }
    if refs_name.endswith(".p"):
        (root / refs_name).write_bytes(pickle.dumps(refs))
    else:
        (root / refs_name).write_text(json.dumps(refs))
    (root / "instances.json").write_text(json.dumps(instances))
    return root


def test_refcoco_layout_with_polygons_and_a_sample_per_sentence(tmp_path):
    root = _write_refcoco(tmp_path / "refcoco", image_dir=tmp_path / "coco")
    samples = read_refcoco(root, "testA", dataset="refcoco", image_dir=tmp_path / "coco")
    assert [s.expression for s in samples] == ["man on the left", "left guy"]
    assert samples[0].image_path == tmp_path / "coco" / "COCO_train2014_000000000001.jpg"
    mask = samples[0].mask()
    assert mask.shape == (20, 30)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 11, 3, 7)  # pycocotools' polygon fill


def test_pickled_refs_need_an_explicit_flag(tmp_path):
    root = _write_refcoco(tmp_path / "refcocog", refs_name="refs(umd).p")
    with pytest.raises(DatasetFormatError, match="pickle.*allow_pickle"):
        read_refcoco(root, dataset="refcocog")
    assert len(read_refcoco(root, dataset="refcocog", allow_pickle=True)) == 2


def test_uncompressed_rle_decodes(tmp_path):
    # Column-major runs over a 4x3 image: 5 off, 4 on, 3 off.
    mask = decode_segmentation({"size": [4, 3], "counts": [5, 4, 3]}, 4, 3)
    assert mask.sum() == 4 and mask.T.flatten().tolist() == [False] * 5 + [True] * 4 + [False] * 3


def test_missing_annotation_and_unknown_split_are_named(tmp_path):
    root = _write_refcoco(tmp_path / "bad")
    instances = json.loads((root / "instances.json").read_text())
    instances["annotations"] = []
    (root / "instances.json").write_text(json.dumps(instances))
    with pytest.raises(DatasetFormatError, match="ref 7: annotation 70"):
        read_refcoco(root)
    good = _write_refcoco(tmp_path / "good")
    with pytest.raises(DatasetFormatError, match=r"splits present: \['testA'\]"):
        read_refcoco(good, "val")
