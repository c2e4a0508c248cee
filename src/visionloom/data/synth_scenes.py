"""Synthetic scenes of shapes with RefCOCO-style referring expressions, masks, captions and questions.

Each scene has 2 to 4 objects (shape, colour, size, position, sometimes overlapping) on a plain or
cluttered background. Every object that some expression can single out gets a referring
expression in the RefCOCO manner: the fewest attributes that make it unique ("the circle", "the
red circle", "the small red circle"), else a location ("the red circle on the left") or a relation
to another object ("the red circle left of the blue square"). Masks are the visible part of the
object (later objects cover earlier ones). Deterministic by seed.

Layout written (what `visionloom.data.refcoco.read_refcoco` reads):
    OUT/images/scene_NNNNN.png   SIZE x SIZE RGB
    OUT/instances.json           COCO instances: images, annotations (RLE masks, xywh boxes), categories
    OUT/refs.json                RefCOCO refs: ref_id, ann_id, image_id, split, sentences, category_id
    OUT/captions.json            [{"image_id", "split", "caption"}]   for pretraining the tiny VLM
    OUT/qa.json                  [{"image_id", "split", "question", "answer"}]   pretraining and pruning
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "diamond", "star"]
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 210),
    "yellow": (230, 200, 30),
    "purple": (130, 50, 170),
    "orange": (240, 130, 20),
}
SIZES = {"small": (0.09, 0.12), "large": (0.16, 0.21)}  # radius as a fraction of the image side
NUMBERS = ["zero", "one", "two", "three", "four"]
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    centre: tuple[float, float]  # (x, y) in pixels
    radius: float
    side: int  # the image's side in pixels

    @property
    def location(self) -> str:
        """'top left', 'bottom', 'center', ...: thirds of the image, as people say them."""
        return location_words(self.centre, self.side)


# Every answer `location_words` gives, in a fixed order (the pretraining head's class ids).
LOCATIONS = [
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
]


def location_words(centre: tuple[float, float], side: float) -> str:
    x, y = centre[0] / side, centre[1] / side
    vertical = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    horizontal = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    return " ".join(word for word in (vertical, horizontal) if word) or "center"


def split_of(image_id: int, total: int) -> str:
    fraction, cumulative = image_id / total, 0.0
    for name, share in SPLITS:
        cumulative += share
        if fraction < cumulative:
            return name
    return SPLITS[-1][0]


# ---------------------------------------------------------------------------------------- drawing
def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = np.pi / 2 + k * np.pi / 5
            points.append((cx + radius * np.cos(angle), cy - radius * np.sin(angle)))
        return points
    return None  # circle


def draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, fill) -> None:
    cx, cy = obj.centre
    polygon = _polygon(obj.shape, cx, cy, obj.radius)
    if polygon is None:
        draw.ellipse([cx - obj.radius, cy - obj.radius, cx + obj.radius, cy + obj.radius], fill=fill)
    else:
        draw.polygon(polygon, fill=fill)


def render(objects: list[SceneObject], size: int, rng: random.Random) -> tuple[Image.Image, list[np.ndarray]]:
    """The scene image and each object's visible mask (bool [size, size])."""
    background = tuple(rng.randint(150, 235) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.5:  # clutter: thin lines and faint blobs that are not objects
        for _ in range(rng.randint(2, 6)):
            grey = rng.randint(90, 200)
            points = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(2)]
            draw.line(points, fill=(grey, grey, grey), width=rng.randint(1, 2))
    masks = []
    for obj in objects:
        shade = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[obj.colour])
        draw_shape(draw, obj, shade)
        layer = Image.new("L", (size, size), 0)
        draw_shape(ImageDraw.Draw(layer), obj, 255)
        mask = np.asarray(layer) > 127
        masks = [previous & ~mask for previous in masks]  # the new object covers what it overlaps
        masks.append(mask)
    return image, masks


def random_objects(rng: random.Random, size: int) -> list[SceneObject]:
    count = rng.randint(2, 4)
    objects: list[SceneObject] = []
    for _ in range(100):
        if len(objects) == count:
            break
        kind = rng.choice(list(SIZES))
        radius = rng.uniform(*SIZES[kind]) * size
        centre = (rng.uniform(radius, size - radius), rng.uniform(radius, size - radius))
        # Some overlap is allowed (it happens in RefCOCO); mostly hidden objects are not.
        if any(
            np.hypot(centre[0] - o.centre[0], centre[1] - o.centre[1]) < 0.8 * (radius + o.radius)
            for o in objects
        ):
            continue
        objects.append(SceneObject(rng.choice(SHAPES), rng.choice(list(COLOURS)), kind, centre, radius, size))
    return objects


# ---------------------------------------------------------------------------------------- language
def where(obj: SceneObject) -> str:
    return where_phrase(obj.location)


def where_phrase(location: str) -> str:
    return f"{'in' if location == 'center' else 'at'} the {location}"


def names_location(expression: str) -> bool:
    """Whether an expression says where its object is (in the words `where` writes)."""
    return any(where_phrase(location) in expression for location in LOCATIONS)


def _describe(obj: SceneObject, fields: tuple[str, ...]) -> str:
    words = [getattr(obj, name) for name in ("size", "colour") if name in fields]
    return " ".join([*words, obj.shape])


def _matches(obj: SceneObject, other: SceneObject, fields: tuple[str, ...]) -> bool:
    return all(getattr(obj, name) == getattr(other, name) for name in (*fields, "shape"))


def referring_expressions(index: int, objects: list[SceneObject], rng: random.Random) -> list[str]:
    """Up to two expressions that single out objects[index], or [] when none does."""
    target = objects[index]
    others = [o for i, o in enumerate(objects) if i != index]
    expressions = []
    for fields in ((), ("colour",), ("size", "colour")):
        if not any(_matches(target, o, fields) for o in others):
            expressions.append(f"the {_describe(target, fields)}")
            break
    described = _describe(target, ("colour",))
    rivals = [o for o in others if _matches(target, o, ("colour",))]
    if all(o.location != target.location for o in rivals):
        expressions.append(f"the {described} {where(target)}")
    for anchor in others:
        dx = target.centre[0] - anchor.centre[0]
        if abs(dx) < target.radius + anchor.radius:
            continue
        side = "left of" if dx < 0 else "right of"
        # The relation must hold for the target only, among the objects it could be confused with.
        if all((o.centre[0] - anchor.centre[0] < 0) != (dx < 0) for o in rivals):
            expressions.append(f"the {described} {side} the {_describe(anchor, ('colour',))}")
            break
    if not expressions:
        return []
    rng.shuffle(expressions)
    return expressions[:2]


def caption(objects: list[SceneObject]) -> str:
    parts = [f"a {o.size} {o.colour} {o.shape} {where(o)}" for o in objects]
    return "; ".join(parts) + "."


def questions(objects: list[SceneObject], rng: random.Random) -> list[tuple[str, str]]:
    """Short-answer questions whose answers the image decides (colour, shape, count, yes/no, where)."""
    pairs = []
    shapes = [o.shape for o in objects]
    colours = [o.colour for o in objects]
    for obj in objects:
        if shapes.count(obj.shape) == 1:
            pairs.append((f"what color is the {obj.shape}?", obj.colour))
            pairs.append((f"where is the {obj.shape}?", obj.location))
        if colours.count(obj.colour) == 1:
            pairs.append((f"what shape is the {obj.colour} object?", obj.shape))
            pairs.append((f"where is the {obj.colour} object?", obj.location))
    shape = rng.choice(SHAPES)
    pairs.append((f"how many {shape}s are there?", NUMBERS[shapes.count(shape)]))
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    present = any(o.colour == colour and o.shape == shape for o in objects)
    if not present and rng.random() < 0.5:  # ask about what is there as often as what is not
        obj = rng.choice(objects)
        colour, shape, present = obj.colour, obj.shape, True
    pairs.append((f"is there a {colour} {shape}?", "yes" if present else "no"))
    return pairs


# ---------------------------------------------------------------------------------------- writer
def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a bool [H, W] mask, JSON-ready."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def generate(out: Path, scenes: int, seed: int = 0, size: int = 224, progress: bool = True) -> Path:
    """Write `scenes` scenes to `out` (layout in the module docstring) and return `out/refs.json`."""
    if scenes < 10:
        raise ValueError(f"--scenes {scenes}: need at least 10 scenes to fill train, val and test")
    (out / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": shape} for i, shape in enumerate(SHAPES)]
    images, annotations, refs, captions, qa = [], [], [], [], []
    iterator = range(scenes)
    if progress:
        from visionloom.progress import track

        iterator = track(iterator, description=f"drawing {scenes} scenes")
    for image_id in iterator:
        scene_rng = random.Random(f"{seed}-{image_id}")
        objects = random_objects(scene_rng, size)
        image, masks = render(objects, size, scene_rng)
        file_name = f"scene_{image_id:05d}.png"
        image.save(out / "images" / file_name)
        split = split_of(image_id, scenes)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        captions.append({"image_id": image_id, "split": split, "caption": caption(objects)})
        qa += [
            {"image_id": image_id, "split": split, "question": q, "answer": a}
            for q, a in questions(objects, scene_rng)
        ]
        for index, (obj, mask) in enumerate(zip(objects, masks, strict=True)):
            ys, xs = np.nonzero(mask)
            if len(xs) < 20:  # almost entirely covered: nothing a person could point at
                continue
            ann_id = len(annotations)
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": SHAPES.index(obj.shape) + 1,
                    "bbox": box,
                    "area": int(mask.sum()),
                    "segmentation": encode_mask(mask),
                    "iscrowd": 0,
                    "attributes": {"colour": obj.colour, "size": obj.size},
                }
            )
            expressions = referring_expressions(index, objects, scene_rng)
            if expressions:
                ref_id = len(refs)
                refs.append(
                    {
                        "ref_id": ref_id,
                        "ann_id": ann_id,
                        "image_id": image_id,
                        "split": split,
                        "category_id": SHAPES.index(obj.shape) + 1,
                        "file_name": file_name,
                        "sentences": [
                            {"sent_id": ref_id * 10 + k, "sent": sent, "raw": sent, "tokens": sent.split()}
                            for k, sent in enumerate(expressions)
                        ],
                    }
                )
    (out / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    (out / "refs.json").write_text(json.dumps(refs, indent=0))
    (out / "captions.json").write_text(json.dumps(captions, indent=0))
    (out / "qa.json").write_text(json.dumps(qa, indent=0))
    return out / "refs.json"
