"""Readers for RefCOCO, RefCOCO+ and RefCOCOg (and the synthetic scenes, which use their format).

The released data (github.com/lichengunc/refer) is a refs file (`refs(unc).p`, `refs(umd).p`,
`refs(google).p`: a pickled list of refs with `ref_id`, `ann_id`, `image_id`, `split`, `sentences`)
next to COCO's `instances.json`, with the images in COCO's train2014 folder. Pickle runs code on
load, so a `.p` file is read only with `allow_pickle=True`; a JSON export of the same list
(`refs(unc).json` or `refs.json`) is always preferred. Masks are decoded with pycocotools
(polygons or RLE). Every sentence is its own sample, as in the papers' evaluation.

Splits are the release's: RefCOCO and RefCOCO+ (unc) have train, val, testA and testB; RefCOCOg
(umd) has train, val and test; RefCOCOg (google) only train and val. The image folder is found
among the layouts people keep COCO in (`IMAGE_DIRS`), unless one is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionloom.config import read_json
from visionloom.data.errors import DatasetFormatError, listing, resolve_inside

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}

# Where the images are looked for, relative to the data root (the folder with the refs file): the
# synthetic scenes' images/, the refer repository's layout (data/refcoco next to
# data/images/mscoco/images/train2014), and COCO's own train2014 folder beside or inside the root.
IMAGE_DIRS = (
    "images",
    "../images/mscoco/images/train2014",
    "images/mscoco/images/train2014",
    "images/train2014",
    "train2014",
    "../train2014",
    "../coco/train2014",
)

# The order results are reported in (F-LMM's tables); other non-training splits follow.
EVALUATION_ORDER = ("val", "test", "testA", "testB")

logger = logging.getLogger("visionloom")


@dataclass(frozen=True)
class RefSample:
    """One referring expression and the object it refers to."""

    ref_id: int
    sent_id: int
    image_id: int
    image_path: Path
    expression: str
    split: str
    box: tuple[float, float, float, float]  # x, y, w, h in image pixels (COCO)
    height: int
    width: int
    segmentation: object  # COCO polygons or RLE; `mask()` decodes it

    def mask(self) -> np.ndarray:
        """bool [H, W]: the object's mask in image pixels."""
        return decode_segmentation(self.segmentation, self.height, self.width)


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: merge the parts into one RLE
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def find_image_dir(root: Path, image_dir: str | Path | None, file_name: str) -> Path:
    """The folder holding the images: `image_dir` when given, else the first of IMAGE_DIRS that
    holds `file_name` (the first image of instances.json). Says which one was used."""
    if image_dir is not None:
        folder = Path(image_dir)
        if not (folder / file_name).is_file():
            raise DatasetFormatError(
                f"image_dir {folder}: {file_name} (the first image of instances.json) is not there"
            )
        return folder
    for relative in IMAGE_DIRS:
        folder = (root / relative).resolve()
        if (folder / file_name).is_file():
            logger.info("%s: images from %s", root, folder)
            return folder
    raise DatasetFormatError(
        f"{root}: cannot find the images: {file_name} (the first image of instances.json) is in none of "
        f"{', '.join(str(root / r) for r in IMAGE_DIRS)}; give the folder with `--set image_dir=DIR`"
    )


def evaluation_splits(present: set[str] | list[str]) -> list[str]:
    """The splits a data set is evaluated on, in the order papers report them (val included)."""
    present = set(present)
    known = [split for split in EVALUATION_ORDER if split in present]
    return known + sorted(present - set(known) - {"train"})


def group_by_split(samples: list[RefSample]) -> dict[str, list[RefSample]]:
    """The samples of each split, in the release's order."""
    by_split: dict[str, list[RefSample]] = {}
    for sample in samples:
        by_split.setdefault(sample.split, []).append(sample)
    return by_split


def find_refs_file(root: Path, split_by: str | None) -> Path:
    names = [f"refs({split_by}).json", f"refs({split_by}).p"] if split_by else []
    names += ["refs.json", "refs.p"]
    for name in names:
        if (root / name).exists():
            return root / name
    if split_by is None:  # one refs(<split_by>) file and no choice to make
        found = sorted(root.glob("refs(*).json")) or sorted(root.glob("refs(*).p"))
        if len(found) == 1:
            return found[0]
        if found:
            raise DatasetFormatError(
                f"{root}: several refs files ({', '.join(p.name for p in found)}); choose one with split_by (`--set split_by=unc`)"
            )
    raise DatasetFormatError(f"{root}: no refs file; looked for {', '.join(names)}")


def load_refs(path: Path, allow_pickle: bool = False) -> list[dict]:
    if path.suffix == ".json":
        return read_json(path, DatasetFormatError)
    if allow_pickle is not True:  # only the real True: a truthy "false" or "n" must not unpickle
        raise DatasetFormatError(
            f"{path} is a pickle, and unpickling runs whatever code the file holds. Export it to JSON "
            f"(refs = pickle.load(open(...,'rb')); json.dump(refs, ...)) from a trusted copy, or pass "
            f"allow_pickle (`--set allow_pickle=true`) if you trust where this file came from"
        )
    import pickle

    with open(path, "rb") as handle:
        return pickle.load(handle)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def segmentation_problem(segmentation: object, height: int, width: int) -> str | None:
    """Why a COCO segmentation cannot be decoded, or None (checked before pycocotools sees it)."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "segmentation is an empty polygon list"
        for part in segmentation:
            if not isinstance(part, list) or len(part) < 6 or len(part) % 2 or not all(map(_number, part)):
                return f"a polygon must be a list of at least 3 x, y pairs, got {str(part)[:60]}"
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [height, width]:
            return f"RLE size {size!r} is not the image's [{height}, {width}]"
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                return f"uncompressed RLE counts must be non-negative integers summing to {height * width}"
            return None
        if not isinstance(counts, str) or not counts:
            return f"RLE counts must be a string (compressed) or a list (uncompressed), got {type(counts).__name__}"
        return compressed_rle_problem(counts, height * width)
    return f"segmentation must be polygons (a list) or RLE (a mapping), got {type(segmentation).__name__}"


def compressed_rle_problem(counts: str, pixels: int) -> str | None:
    """Why COCO's compressed RLE string `counts` is not a mask of `pixels` pixels, or None.

    pycocotools decodes any string without checking it, and a malformed one ("0", "zzzz") gives
    whatever memory held: a different mask each time. Its format (maskApi.c, rleFrString) is
    decoded here once to check it: no library exposes the check. Each run length is written in
    5-bit groups, 48 added to each to make a character, bit 0x20 saying another group follows and,
    in the last group, bit 0x10 the sign; from the third run on, a length is stored as the
    difference from the run two before.
    """
    if not counts.isascii():
        return "RLE counts hold non-ASCII characters; compressed RLE is ASCII (COCO's format)"
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position == len(counts):
                return "compressed RLE counts end in the middle of a run length"
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                return f"compressed RLE counts hold {counts[position]!r}, outside COCO's alphabet"
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position, shift = position + 1, shift + 5
            if not more and group & 0x10:
                value -= 1 << shift  # the sign bit: extend it
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return f"compressed RLE counts decode to a negative run length ({value})"
        runs.append(value)
    if sum(runs) != pixels:
        return f"compressed RLE counts cover {sum(runs)} pixels, not the image's {pixels}"
    return None


def index_instances(instances_file: Path) -> tuple[dict, dict, list[str]]:
    """(images by id, annotations by id, problems) of a COCO instances file."""
    instances = read_json(instances_file, DatasetFormatError)
    if not isinstance(instances, dict) or not isinstance(instances.get("images"), list):
        raise DatasetFormatError(f"{instances_file}: expected COCO instances with an 'images' list")
    if not isinstance(instances.get("annotations"), list):
        raise DatasetFormatError(f"{instances_file}: no 'annotations' list")
    problems, images, annotations = [], {}, {}
    for image in instances["images"]:
        fields = isinstance(image, dict) and all(k in image for k in ("id", "file_name", "height", "width"))
        if not fields or not all(isinstance(image[k], int) and image[k] > 0 for k in ("height", "width")):
            problems.append(f"image {str(image)[:80]}: needs id, file_name and positive height and width")
            continue
        images[image["id"]] = image
    for annotation in instances["annotations"]:
        if not isinstance(annotation, dict) or not all(
            k in annotation for k in ("id", "image_id", "bbox", "segmentation")
        ):
            problems.append(f"annotation {str(annotation)[:80]}: needs id, image_id, bbox and segmentation")
            continue
        where = f"annotation {annotation['id']}"
        image = images.get(annotation["image_id"])
        if image is None:
            problems.append(f"{where}: image_id {annotation['image_id']!r} is not in the images list")
            continue
        bbox = annotation["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_number, bbox)):
            problems.append(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
            continue
        why = segmentation_problem(annotation["segmentation"], image["height"], image["width"])
        if why:
            problems.append(f"{where}: {why}")
            continue
        annotations[annotation["id"]] = annotation
    return images, annotations, problems


def ref_samples(
    ref: object, split: str | None, images: dict, annotations: dict, image_dir: Path
) -> tuple[list[RefSample], list[str]]:
    """One ref's samples (one per sentence) and its problems; nothing for a ref of another split."""
    if not isinstance(ref, dict) or not all(
        k in ref for k in ("ref_id", "ann_id", "image_id", "split", "sentences")
    ):
        return [], [f"ref {str(ref)[:80]}: needs ref_id, ann_id, image_id, split and sentences"]
    where = f"ref {ref['ref_id']}"
    if not isinstance(ref["split"], str):
        return [], [f"{where}: split {ref['split']!r} is not a name"]
    if split is not None and ref["split"] != split:
        return [], []
    annotation = annotations.get(ref["ann_id"])
    image = images.get(ref["image_id"])
    if annotation is None:
        return [], [f"{where}: annotation {ref['ann_id']} is not in instances.json (or was refused above)"]
    if image is None or annotation["image_id"] != ref["image_id"]:
        return [], [f"{where}: image_id {ref['image_id']!r} is not the image of annotation {ref['ann_id']}"]
    path, why = resolve_inside(image_dir, image["file_name"])
    if why:
        return [], [f"{where}: {why}"]
    sentences = ref["sentences"]
    if not isinstance(sentences, list) or not sentences:
        return [], [f"{where}: sentences must be a non-empty list"]
    samples, problems = [], []
    for number, sentence in enumerate(sentences):
        text = sentence.get("sent") if isinstance(sentence, dict) else None
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where} (annotation {ref['ann_id']}): sentence {number} has no text ('sent')")
            continue
        samples.append(
            RefSample(
                ref_id=ref["ref_id"],
                sent_id=sentence.get("sent_id", -1),
                image_id=ref["image_id"],
                image_path=path,
                expression=text.strip(),
                split=ref["split"],
                box=tuple(annotation["bbox"]),
                height=image["height"],
                width=image["width"],
                segmentation=annotation["segmentation"],
            )
        )
    return samples, problems


def read_refcoco(
    root: str | Path,
    split: str | None = None,
    *,
    dataset: str | None = None,
    split_by: str | None = None,
    image_dir: str | Path | None = None,
    allow_pickle: bool = False,
) -> list[RefSample]:
    """Every (expression, object) sample of `split` (all splits when None).

    `root` holds the refs file and `instances.json`; `dataset` (refcoco, refcoco+, refcocog) picks
    the default `split_by`; images are looked up in `image_dir`, else found (`find_image_dir`).
    """
    root = Path(root)
    if split_by is None and dataset is not None:
        if dataset not in DEFAULT_SPLIT_BY:
            raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DEFAULT_SPLIT_BY)}")
        split_by = DEFAULT_SPLIT_BY[dataset]
    refs_file = find_refs_file(root, split_by)
    refs = load_refs(refs_file, allow_pickle)
    if not isinstance(refs, list):
        raise DatasetFormatError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
    instances_file = root / "instances.json"
    if not instances_file.exists():
        raise DatasetFormatError(f"{root}: instances.json (COCO instance annotations) is missing")
    images, annotations, problems = index_instances(instances_file)
    if not images:
        raise DatasetFormatError(f"{instances_file}: no usable images")
    image_dir = find_image_dir(root, image_dir, next(iter(images.values()))["file_name"])

    samples = []
    for ref in refs:
        found, why = ref_samples(ref, split, images, annotations, image_dir)
        samples += found
        problems += why
    if problems:
        raise DatasetFormatError(
            f"{refs_file} / {instances_file.name}: {len(problems)} problem(s):{listing(problems)}"
        )
    if not samples:
        found = sorted({str(ref["split"]) for ref in refs})
        raise DatasetFormatError(f"{root}: no samples in split {split!r}; splits present: {found}")
    return samples
