"""A synthetic pedestrian data set in the CUHK-PEDES format, drawn with Pillow.

Each identity is a set of attributes (gender, hair, upper and lower garments with colour, kind and
pattern, shoes, bag, accessory). Half the identities are "siblings" of an earlier one that differ
in one or two attributes, so retrieval needs fine-grained alignment, not one salient colour. Every
image of an identity is a new view (front, back, side), pose, scale, position, background clutter
and, sometimes, an occluder. Captions come from varied templates and synonyms, and some name only
part of what is visible. Deterministic by seed.

Layout written (what `visionloom.data.pedes.read_pedes` reads as CUHK-PEDES):
    OUT/reid_raw.json   [{"split", "captions", "file_path", "id"}, ...]   ids start at 1, as CUHK's do
    OUT/imgs/<file_path>   384x128 (height x width) PNG images
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageDraw

HEIGHT, WIDTH = 384, 128

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "orange": (235, 130, 25),
    "yellow": (235, 210, 40),
    "green": (40, 150, 60),
    "blue": (35, 70, 190),
    "purple": (120, 50, 160),
    "pink": (240, 140, 180),
    "brown": (120, 75, 40),
    "black": (25, 25, 25),
    "white": (238, 238, 238),
    "gray": (128, 128, 128),
}
HAIR_COLOURS = ["black", "brown", "yellow", "gray", "white"]
UPPER_KINDS = ["t-shirt", "shirt", "jacket", "coat", "sweater", "hoodie"]
LOWER_KINDS = ["pants", "jeans", "shorts", "skirt"]
BAGS = ["none", "backpack", "handbag"]
ACCESSORIES = ["none", "hat", "glasses", "scarf", "umbrella"]
SKIN = [(241, 200, 170), (205, 150, 110), (150, 100, 70), (95, 65, 45)]
SYNONYMS = {
    "gray": ["gray", "grey"],
    "pants": ["pants", "trousers"],
    "t-shirt": ["t-shirt", "shirt with short sleeves"],
    "shoes": ["shoes", "sneakers"],
    "handbag": ["handbag", "bag"],
}


@dataclass(frozen=True)
class Pedestrian:
    """One identity's attributes: what every caption of it may mention."""

    gender: str  # man | woman
    hair: str  # colour name, or "bald"
    long_hair: bool
    upper_colour: str
    upper_kind: str
    striped: bool
    lower_colour: str
    lower_kind: str
    shoes: str
    bag: str
    bag_colour: str
    accessory: str
    skin: int


def random_pedestrian(rng: random.Random) -> Pedestrian:
    gender = rng.choice(["man", "woman"])
    lower_kinds = LOWER_KINDS if gender == "woman" else LOWER_KINDS[:3]
    return Pedestrian(
        gender=gender,
        hair=rng.choice(HAIR_COLOURS + (["bald"] if gender == "man" else [])),
        long_hair=gender == "woman" and rng.random() < 0.7,
        upper_colour=rng.choice(list(COLOURS)),
        upper_kind=rng.choice(UPPER_KINDS),
        striped=rng.random() < 0.25,
        lower_colour=rng.choice(list(COLOURS)),
        lower_kind=rng.choice(lower_kinds),
        shoes=rng.choice(["black", "white", "brown", "gray", "red", "blue"]),
        bag=rng.choice(BAGS),
        bag_colour=rng.choice(list(COLOURS)),
        accessory=rng.choice(ACCESSORIES),
        skin=rng.randrange(len(SKIN)),
    )


def sibling(parent: Pedestrian, rng: random.Random) -> Pedestrian:
    """A new identity that differs from `parent` in one or two attributes."""
    fresh = random_pedestrian(rng)
    fields = ["upper_colour", "lower_colour", "shoes", "bag", "accessory", "upper_kind", "hair", "striped"]
    changed = rng.sample(fields, rng.choice([1, 2]))
    updates = {name: getattr(fresh, name) for name in changed}
    child = replace(parent, **updates)
    if child == parent:  # the draw repeated the parent's value: force a visible change
        flipped = [c for c in COLOURS if c != parent.upper_colour]
        child = replace(child, upper_colour=rng.choice(flipped))
    return child


# ---------------------------------------------------------------------------------------- drawing
def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]


def _background(draw: ImageDraw.ImageDraw, rng: random.Random) -> None:
    base = (rng.randint(90, 200),) * 3
    base = _jitter(base, rng, 30)
    draw.rectangle([0, 0, WIDTH, HEIGHT], fill=base)
    ground = rng.randint(int(HEIGHT * 0.7), int(HEIGHT * 0.85))
    draw.rectangle([0, ground, WIDTH, HEIGHT], fill=_jitter(_shade(base, 0.75), rng, 20))
    for _ in range(rng.randint(3, 9)):  # buildings, windows, signs, poles in muted colours
        x0, y0 = rng.randint(-20, WIDTH), rng.randint(-20, ground)
        x1, y1 = x0 + rng.randint(6, 60), y0 + rng.randint(6, 120)
        muted = _jitter((rng.randint(60, 190),) * 3, rng, 45)
        if rng.random() < 0.7:
            draw.rectangle([x0, y0, x1, y1], fill=muted)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=muted)
    for _ in range(rng.randint(0, 4)):
        y = rng.randint(0, HEIGHT)
        draw.line([0, y, WIDTH, y + rng.randint(-30, 30)], fill=_jitter((100, 100, 100), rng, 60), width=2)


def draw_pedestrian(person: Pedestrian, rng: random.Random) -> Image.Image:
    """One image of `person`: a random view, pose, scale, position, background and occluder."""
    image = Image.new("RGB", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(image)
    _background(draw, rng)

    view = rng.choice(["front", "back", "side"])
    height = HEIGHT * rng.uniform(0.72, 0.95)
    top = rng.uniform(4, HEIGHT - height - 4)
    centre = WIDTH / 2 + rng.uniform(-14, 14)
    half = height * (0.13 if view != "side" else 0.09)  # half the torso width
    walking = rng.random() < 0.5

    def y(fraction: float) -> float:
        return top + fraction * height

    skin = _jitter(SKIN[person.skin], rng, 10)
    upper = _jitter(COLOURS[person.upper_colour], rng)
    lower = _jitter(COLOURS[person.lower_colour], rng)
    bag_colour = _jitter(COLOURS[person.bag_colour], rng)

    # A backpack seen from behind covers the back, so it is drawn after the torso; otherwise before.
    def backpack() -> None:
        if view == "back":
            draw.rectangle([centre - half * 0.8, y(0.2), centre + half * 0.8, y(0.45)], fill=bag_colour)
        elif view == "side":
            draw.rectangle([centre - half * 2.0, y(0.2), centre - half * 0.9, y(0.44)], fill=bag_colour)
        else:
            draw.rectangle([centre - half * 1.25, y(0.19), centre + half * 1.25, y(0.24)], fill=bag_colour)

    if person.bag == "backpack" and view != "back":
        backpack()

    # legs and lower garment
    leg_gap = half * (0.5 if walking else 0.15)
    leg_width = half * 0.42
    legs = [centre - leg_gap - leg_width, centre + leg_gap - leg_width * 0.1]
    if view == "side":
        legs = [centre - leg_width / 2 - (leg_gap if walking else 0), centre - leg_width / 2 + leg_gap]
    lower_end = {"pants": 0.93, "jeans": 0.93, "shorts": 0.68, "skirt": 0.7}[person.lower_kind]
    for x0 in legs:
        draw.rectangle([x0, y(0.5), x0 + leg_width, y(0.95)], fill=skin)
        if person.lower_kind in ("pants", "jeans", "shorts"):
            colour = _shade(lower, 0.85) if person.lower_kind == "jeans" else lower
            draw.rectangle([x0, y(0.5), x0 + leg_width, y(lower_end)], fill=colour)
        shoe = _jitter(COLOURS[person.shoes], rng, 10)
        draw.ellipse([x0 - 2, y(0.93), x0 + leg_width + 3, y(0.985)], fill=shoe)
    if person.lower_kind == "skirt":
        draw.polygon(
            [
                (centre - half, y(0.48)),
                (centre + half, y(0.48)),
                (centre + half * 1.5, y(0.7)),
                (centre - half * 1.5, y(0.7)),
            ],
            fill=lower,
        )
    else:
        draw.rectangle([centre - half, y(0.47), centre + half, y(0.56)], fill=lower)

    # torso and upper garment
    torso_end = 0.62 if person.upper_kind == "coat" else 0.5
    draw.rectangle([centre - half, y(0.17), centre + half, y(torso_end)], fill=upper)
    if person.striped:
        stripe = _shade(upper, 0.45) if sum(upper) > 200 else _jitter((220, 220, 220), rng, 10)
        for row in range(5):
            stripe_y = y(0.2 + row * 0.06)
            draw.rectangle([centre - half, stripe_y, centre + half, stripe_y + height * 0.015], fill=stripe)
    if person.upper_kind == "hoodie":
        draw.ellipse([centre - half * 0.8, y(0.12), centre + half * 0.8, y(0.2)], fill=upper)
    if person.upper_kind in ("jacket", "coat") and view == "front":
        draw.line([centre, y(0.18), centre, y(torso_end)], fill=_shade(upper, 0.5), width=2)

    # arms: short sleeves show skin below the elbow
    swing = rng.uniform(-0.12, 0.12) * height if walking else 0.0
    arm_width = half * 0.38
    sides = [-1, 1] if view != "side" else [1]
    for side in sides:
        shoulder_x = centre + side * (half + arm_width / 2)
        hand = (shoulder_x + swing * side * 0.3, y(0.5))
        draw.line([shoulder_x, y(0.19), *hand], fill=skin, width=int(arm_width))
        sleeve_end = 0.3 if person.upper_kind == "t-shirt" else 0.48
        sleeve = (
            shoulder_x + (hand[0] - shoulder_x) * (sleeve_end - 0.19) / 0.31,
            y(sleeve_end),
        )
        draw.line([shoulder_x, y(0.19), *sleeve], fill=upper, width=int(arm_width) + 1)
    hand_x = centre + (half + arm_width / 2) * (1 if view != "side" else 1) + swing * 0.3

    if person.bag == "backpack" and view == "back":
        backpack()
    if person.bag == "handbag":
        draw.rectangle([hand_x - half * 0.4, y(0.46), hand_x + half * 0.45, y(0.58)], fill=bag_colour)
        draw.arc(
            [hand_x - half * 0.3, y(0.41), hand_x + half * 0.35, y(0.5)], 180, 360, fill=bag_colour, width=2
        )

    # neck, head, hair, accessories
    head_r = height * 0.065
    head_y = y(0.085)
    draw.rectangle([centre - head_r * 0.35, head_y, centre + head_r * 0.35, y(0.18)], fill=skin)
    if person.hair != "bald" and person.long_hair:
        hair = _jitter(COLOURS[person.hair], rng, 12)
        draw.rectangle([centre - head_r * 1.1, head_y, centre + head_r * 1.1, y(0.24)], fill=hair)
    draw.ellipse([centre - head_r, head_y - head_r, centre + head_r, head_y + head_r], fill=skin)
    if person.hair != "bald":
        hair = _jitter(COLOURS[person.hair], rng, 12)
        if view == "back":
            draw.ellipse([centre - head_r, head_y - head_r, centre + head_r, head_y + head_r], fill=hair)
        else:
            draw.chord(
                [centre - head_r, head_y - head_r * 1.05, centre + head_r, head_y + head_r * 0.6],
                180,
                360,
                fill=hair,
            )
    if person.accessory == "hat":
        hat = _jitter((40, 40, 40), rng, 30)
        draw.rectangle(
            [centre - head_r * 1.1, head_y - head_r * 1.2, centre + head_r * 1.1, head_y - head_r * 0.4],
            fill=hat,
        )
        draw.rectangle(
            [centre - head_r * 1.5, head_y - head_r * 0.55, centre + head_r * 1.5, head_y - head_r * 0.35],
            fill=hat,
        )
    elif person.accessory == "glasses" and view != "back":
        draw.line([centre - head_r * 0.8, head_y, centre + head_r * 0.8, head_y], fill=(10, 10, 10), width=3)
    elif person.accessory == "scarf":
        draw.rectangle(
            [centre - half * 0.7, y(0.15), centre + half * 0.7, y(0.19)], fill=_jitter((170, 30, 60), rng, 60)
        )
    elif person.accessory == "umbrella":
        canopy = _jitter((30, 30, 90), rng, 40)
        draw.line([hand_x, y(0.45), hand_x, y(0.02)], fill=(40, 40, 40), width=2)
        draw.pieslice([hand_x - head_r * 3, y(-0.04), hand_x + head_r * 3, y(0.1)], 180, 360, fill=canopy)

    if rng.random() < 0.3:  # an occluder: a pole, a car, a passer-by
        kind = rng.choice(["pole", "box"])
        colour = _jitter((rng.randint(40, 200),) * 3, rng, 50)
        if kind == "pole":
            x0 = rng.uniform(0, WIDTH - 14)
            draw.rectangle([x0, 0, x0 + rng.uniform(6, 14), HEIGHT], fill=colour)
        else:
            y0 = rng.uniform(HEIGHT * 0.6, HEIGHT * 0.85)
            x0 = rng.uniform(-WIDTH * 0.5, WIDTH * 0.3)
            draw.rectangle([x0, y0, x0 + rng.uniform(WIDTH * 0.5, WIDTH), HEIGHT], fill=colour)
    return image


# ---------------------------------------------------------------------------------------- captions
def _word(word: str, rng: random.Random) -> str:
    return rng.choice(SYNONYMS.get(word, [word]))


def caption(person: Pedestrian, rng: random.Random, partial: bool = False) -> str:
    """One caption from a random template; `partial` names only some of what is visible."""
    subject = rng.choice(
        {
            "man": ["a man", "a young man", "the man", "a male pedestrian"],
            "woman": ["a woman", "a young woman", "the woman", "a lady"],
        }[person.gender]
    )
    pronoun = "he" if person.gender == "man" else "she"
    possessive = "his" if person.gender == "man" else "her"
    pattern = "striped " if person.striped else ""
    phrases: list[tuple[str, str]] = [
        ("upper", f"a {_word(person.upper_colour, rng)} {pattern}{_word(person.upper_kind, rng)}"),
        (
            "lower",
            f"{_word(person.lower_colour, rng)} {_word(person.lower_kind, rng)}"
            if person.lower_kind != "skirt"
            else f"a {_word(person.lower_colour, rng)} skirt",
        ),
        ("shoes", f"{_word(person.shoes, rng)} {_word('shoes', rng)}"),
    ]
    extras: list[tuple[str, str]] = []
    if person.hair == "bald":
        extras.append(("hair", f"{pronoun} is bald"))
    else:
        length = "long" if person.long_hair else "short"
        extras.append(("hair", f"{pronoun} has {length} {_word(person.hair, rng)} hair"))
    if person.bag != "none":
        verb = rng.choice(["carries", "is carrying", "has"])
        extras.append(("bag", f"{pronoun} {verb} a {_word(person.bag_colour, rng)} {_word(person.bag, rng)}"))
    accessory_text = {
        "hat": f"{pronoun} wears a hat",
        "glasses": f"{pronoun} wears glasses",
        "scarf": f"a scarf is around {possessive} neck",
        "umbrella": f"{pronoun} holds an umbrella",
    }
    if person.accessory != "none":
        extras.append(("accessory", accessory_text[person.accessory]))
    if partial:
        keep_phrases = rng.randint(1, len(phrases))
        phrases = rng.sample(phrases, keep_phrases)
        extras = rng.sample(extras, rng.randint(0, len(extras)))
    else:
        rng.shuffle(extras)
    verb = rng.choice(["is wearing", "wears", "is dressed in", "in"])
    clothes = [text for _, text in phrases]
    listed = clothes[0] if len(clothes) == 1 else ", ".join(clothes[:-1]) + " and " + clothes[-1]
    sentence = f"{subject} {verb} {listed}."
    for _, text in extras:
        sentence += f" {text[0].upper()}{text[1:]}."
    if rng.random() < 0.3:
        sentence = sentence.replace(f"{subject} {verb}", f"{subject} walking on the street {verb}", 1)
    return sentence[0].upper() + sentence[1:]


# ---------------------------------------------------------------------------------------- writer
MIN_IDENTITIES = 10  # the fewest that give every split an identity


TEST_SHARE = Fraction(1, 5)
DEFAULT_VAL_SHARE = 0.1


def split_of(identity: int, total: int, val_share: float = DEFAULT_VAL_SHARE) -> str:
    """By identity (identities never cross splits): the last 20% test, the `val_share` before them
    val (10% by default), the rest train. A larger validation split takes its identities from
    train, so the test split stays the same. Exact fractions: no identity moves by rounding."""
    fraction = Fraction(identity, total)
    val_start = 1 - TEST_SHARE - Fraction(val_share).limit_denominator(10_000)
    return "train" if fraction < val_start else "val" if fraction < 1 - TEST_SHARE else "test"


def generate(
    out: Path,
    identities: int,
    seed: int = 0,
    images_per_identity: int = 4,
    progress: bool = True,
    val_share: float = DEFAULT_VAL_SHARE,
) -> Path:
    """Write the data set to `out` (CUHK-PEDES layout) and return the annotation file."""
    if identities < MIN_IDENTITIES:
        raise ValueError(
            f"--ids {identities}: need at least {MIN_IDENTITIES} identities to fill train, val and test"
        )
    counts = {
        name: sum(split_of(i, identities, val_share) == name for i in range(identities))
        for name in ("train", "val")
    }
    if not 0 < val_share < 1 - TEST_SHARE or not all(counts.values()):
        raise ValueError(
            f"--val-share {val_share}: needs a share above 0 and below {float(1 - TEST_SHARE)} that leaves "
            f"{identities} identities at least one in train and in val (gives train {counts['train']}, val {counts['val']})"
        )
    rng = random.Random(seed)
    people: list[Pedestrian] = []
    for _ in range(identities):
        if people and rng.random() < 0.5:
            candidate = sibling(rng.choice(people), rng)
        else:
            candidate = random_pedestrian(rng)
        while candidate in people:  # identities must be distinguishable in principle
            candidate = random_pedestrian(rng)
        people.append(candidate)
    # Shuffle so that siblings land in every split, then assign splits by position.
    rng.shuffle(people)

    (out / "imgs" / "synth").mkdir(parents=True, exist_ok=True)
    annotations = []
    jobs = [(pid, view) for pid in range(identities) for view in range(images_per_identity)]
    iterator = jobs
    if progress:
        from visionloom.progress import track

        iterator = track(jobs, description=f"drawing {len(jobs)} pedestrians")
    for pid, view in iterator:
        person = people[pid]
        sample_rng = random.Random(f"{seed}-{pid}-{view}")
        file_path = f"synth/{pid + 1:05d}_{view}.png"
        draw_pedestrian(person, sample_rng).save(out / "imgs" / file_path)
        captions = [
            caption(person, sample_rng, partial=False),
            caption(person, sample_rng, partial=sample_rng.random() < 0.4),
        ]
        annotations.append(
            {
                "split": split_of(pid, identities, val_share),
                "captions": captions,
                "file_path": file_path,
                "id": pid + 1,
            }
        )
    annotation_file = out / "reid_raw.json"
    annotation_file.write_text(json.dumps(annotations, indent=1))
    (out / "attributes.json").write_text(
        json.dumps([{"id": pid + 1, **vars(person)} for pid, person in enumerate(people)], indent=1)
    )
    return annotation_file


def vocabulary() -> list[str]:
    """Every word the captions can use, for building a tiny tokenizer offline."""
    words = (
        set(COLOURS) | set(HAIR_COLOURS) | set(UPPER_KINDS) | set(LOWER_KINDS) | set(BAGS) | set(ACCESSORIES)
    )
    for options in SYNONYMS.values():
        for option in options:
            words.update(option.split())
    words.update(
        [
            "a",
            "the",
            "young",
            "male",
            "pedestrian",
            "lady",
            "man",
            "woman",
            "he",
            "she",
            "his",
            "her",
            "is",
            "wearing",
            "wears",
            "dressed",
            "in",
            "and",
            "has",
            "long",
            "short",
            "hair",
            "bald",
            "carries",
            "carrying",
            "a",
            "an",
            "striped",
            "skirt",
            "shoes",
            "sneakers",
            "glasses",
            "hat",
            "scarf",
            "around",
            "neck",
            "holds",
            "umbrella",
            "walking",
            "on",
            "street",
            "with",
            "sleeves",
        ]
    )
    return sorted(words)
