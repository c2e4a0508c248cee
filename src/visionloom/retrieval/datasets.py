"""Training pairs, evaluation sets and collate for retrieval: the model's `InputSpec` decides the fields.

Randomness never comes from a worker's or a process's RNG: the batch samplers (engine/samplers.py)
draw a seed for every sample from (run seed, epoch), and the dataset's augmentation and masking use
only that seed. So a batch is the same whatever the number of workers or processes, and a resumed
run sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from visionloom.data.pedes import PedesSplit
from visionloom.engine.samplers import Batches, IdentityBatches, RandomBatches
from visionloom.images import ImageReadError, read_rgb

GREY = 128  # the value of masked pixels: the middle of the uint8 range, about the mean after normalising
AUGMENTS = ("flip", "irra")  # "irra": IRRA's train transforms, flip + pad 10 / random crop + random erasing
IRRA_PAD = 10  # pixels of zero padding before the random crop back to size (IRRA's T.Pad(10))


def pad_and_crop(image: Image.Image, rng: random.Random, pad: int = IRRA_PAD) -> Image.Image:
    """Zero-pad by `pad` on every side, then crop back to the original size at a random offset."""
    width, height = image.size
    padded = Image.new("RGB", (width + 2 * pad, height + 2 * pad))
    padded.paste(image, (pad, pad))
    left, top = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
    return padded.crop((left, top, left + width, top + height))


def random_erase(pixels: torch.Tensor, rng: random.Random, probability: float = 0.5) -> torch.Tensor:
    """torchvision's RandomErasing (area 2-40%, aspect 0.3-3.3, up to 10 tries) on uint8 [3, H, W].

    Written here because torchvision does not load beside the torch build this project pins. The
    box is filled with the image's own mean colour: IRRA fills with the normalisation mean, which
    is the same idea (a neutral patch) without depending on the processor.
    """
    if rng.random() >= probability:
        return pixels
    _, height, width = pixels.shape
    for _ in range(10):
        area = height * width * rng.uniform(0.02, 0.4)
        ratio = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        box_height, box_width = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < box_height < height and 0 < box_width < width:
            top, left = rng.randint(0, height - box_height), rng.randint(0, width - box_width)
            erased = pixels.clone()
            fill = pixels.float().mean((1, 2)).round().to(pixels.dtype)  # [3]
            erased[:, top : top + box_height, left : left + box_width] = fill[:, None, None]
            return erased
    return pixels


# Decoded images kept in memory, so that each file is decoded and resized once per process (every
# epoch, validation and run of a `demo` or `compare` reads the same files): at most this many, the
# least recently used dropped first. 2048 images at IRRA's 384x128 take about 300 MB.
DECODED_IMAGES = 2048


def load_image(path: Path, size: tuple[int, int] | None) -> Image.Image:
    """RGB image resized (bicubic) to `size` = (height, width) when it is not already that size (None: as stored)."""
    return Image.fromarray(_decoded(str(path), None if size is None else tuple(size)))


@functools.lru_cache(maxsize=DECODED_IMAGES)
def _decoded(path: str, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 [H, W, 3], read-only: shared by every caller."""
    try:
        image = read_rgb(path)
    except ImageReadError as error:
        raise ImageReadError(f"{error} (run `visionloom data check` on the data set)") from None
    if size is not None:
        height, width = size
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image)
    pixels.flags.writeable = False
    return pixels


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # uint8 [3, H, W]


# ---------------------------------------------------------------------------------------- datasets
class TrainPairs(Dataset):
    """(image, caption) training samples of a split, with the fields the model's InputSpec asks for."""

    def __init__(self, split: PedesSplit, spec, vq_cache=None, augment: str = "flip"):
        if augment not in AUGMENTS:
            raise ValueError(f"augment {augment!r} is not one of {AUGMENTS}")
        self.augment = augment
        self.split = split
        self.pairs = split.pairs()
        self.spec = spec
        self.vq_cache = vq_cache
        if spec.vq_code_grid is not None and vq_cache is None:
            raise ValueError(
                "this model needs VQ codes but no cache was given (build one with `visionloom retrieval vq cache`)"
            )
        tokenizer = spec.tokenizer
        self.mask_token_id = tokenizer.mask_token_id
        if spec.text_mask_ratio > 0 and self.mask_token_id is None:
            raise ValueError(f"text masking needs a mask token; {type(tokenizer).__name__} has none")
        self.special_ids = set(tokenizer.all_special_ids)

    @property
    def pids(self) -> list[int]:
        return [pid for _, pid, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, draw_seed = key
        rng = random.Random(draw_seed)
        image_index, pid, caption = self.pairs[index]
        record = self.split.images[image_index]
        image = load_image(record.path, self.spec.image_size)
        flipped = rng.random() < 0.5
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.augment == "irra":
            image = pad_and_crop(image, rng)
        pixels = to_tensor(image)  # uint8 [3, H, W]
        if self.augment == "irra":
            pixels = random_erase(pixels, rng)
        caption_ids = self.spec.tokenizer(caption, truncation=True, max_length=self.spec.max_text_length)[
            "input_ids"
        ]
        item = {
            "images": pixels,
            "caption_ids": caption_ids,
            "pids": pid,
            "image_ids": image_index,
            "index": index,
        }
        if self.spec.text_mask_ratio > 0:
            item["masked_caption_ids"] = self.mask_caption(caption_ids, rng)
        if self.spec.image_mask_grid is not None:
            item["masked_images"] = self.mask_image(pixels, rng)
        if self.spec.vq_code_grid is not None:
            item["vq_ids"] = self.vq_cache.codes(record.path, flipped)
        return item

    def mask_caption(self, caption_ids: list[int], rng: random.Random) -> list[int]:
        """A masked copy: the clean caption is never written to (IRRA's in-place bug)."""
        masked = list(caption_ids)
        candidates = [i for i, token in enumerate(masked) if token not in self.special_ids]
        chosen = [i for i in candidates if rng.random() < self.spec.text_mask_ratio]
        if not chosen and candidates:
            chosen = [rng.choice(candidates)]
        for position in chosen:
            masked[position] = self.mask_token_id
        return masked

    def mask_image(self, pixels: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """A copy with `image_mask_ratio` of the blocks of the VQ grid greyed out."""
        rows, cols = self.spec.image_mask_grid
        height, width = pixels.shape[1:]
        masked = pixels.clone()
        blocks = rng.sample(range(rows * cols), round(self.spec.image_mask_ratio * rows * cols))
        for block in blocks:
            row, col = divmod(block, cols)
            masked[
                :,
                row * height // rows : (row + 1) * height // rows,
                col * width // cols : (col + 1) * width // cols,
            ] = GREY
        return masked


def pad(sequences: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, S_max] and their attention mask."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


class Collate:
    """Items -> the batch contract of `retrieval/model.py`."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "images": torch.stack([item["images"] for item in items]),
            "pids": torch.tensor([item["pids"] for item in items]),
            "image_ids": torch.tensor([item["image_ids"] for item in items]),
            "index": torch.tensor([item["index"] for item in items]),
        }
        batch["caption_ids"], batch["caption_mask"] = pad(
            [item["caption_ids"] for item in items], self.pad_token_id
        )
        if "masked_caption_ids" in items[0]:
            batch["masked_caption_ids"], _ = pad(
                [item["masked_caption_ids"] for item in items], self.pad_token_id
            )
        if "masked_images" in items[0]:
            batch["masked_images"] = torch.stack([item["masked_images"] for item in items])
        if "vq_ids" in items[0]:
            batch["vq_ids"] = torch.stack([item["vq_ids"] for item in items])
        return batch


class GalleryImages(Dataset):
    """A split's images at the model's size, unaugmented, in split order."""

    def __init__(self, split: PedesSplit, image_size: tuple[int, int] | None):
        self.split, self.image_size = split, image_size

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(load_image(self.split.images[index].path, self.image_size))


def train_loader(dataset: TrainPairs, sampler: Batches, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=Collate(dataset.spec.tokenizer.pad_token_id),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # Its own generator: creating an iterator draws a worker base seed, which from the global
        # RNG would shift the model's dropout stream on every epoch and on resume.
        generator=torch.Generator().manual_seed(0),
    )


def make_sampler(
    dataset: TrainPairs, batch_size: int, ids_per_batch: int, seed: int, rank: int = 0, world_size: int = 1
) -> Batches:
    """Identity-balanced when ids_per_batch > 0 (IRRA's default for SDM), else random."""
    if ids_per_batch > 0:
        return IdentityBatches(dataset.pids, batch_size, ids_per_batch, seed, rank, world_size)
    return RandomBatches(len(dataset), batch_size, seed, rank, world_size)
