"""Images as a person's viewer shows them: the one way every reader of the project opens a file.

    read_rgb(path)   8-bit RGB, turned upright by its EXIF orientation, 16-bit samples scaled
                     (an `EmbeddedImage`, the bytes a parquet data set holds, reads the same way)

Two things a plain `Image.open(path).convert("RGB")` gets silently wrong:
- a photo taken on its side carries its orientation in EXIF, which viewers apply and PIL does not
  (`ImageOps.exif_transpose` applies it);
- a 16-bit greyscale PNG opens in mode "I;16" (values up to 65535), which `convert("RGB")` clips
  at 255: nearly every pixel white. The samples are scaled to 8 bits instead.
Modes whose range is not known (32-bit float "F") are refused, naming the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Integer modes with more than 8 bits a sample, and the largest value each holds.
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def to_rgb(image: Image.Image, source: str | Path = "image") -> Image.Image:
    """`image` upright (EXIF orientation) in 8-bit RGB; ValueError naming `source` for a mode
    whose range is unknown."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose copies even when upright
        image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_MODES or image.mode == "I":
        samples = np.asarray(image, dtype=np.int64)
        # "I" is 32-bit: PNG's 16-bit greyscale opens in it on some PIL versions. Its range is
        # taken as 16 bits when every value fits there; anything else is refused below.
        top = WIDE_MODES.get(image.mode, 65535)
        if samples.min() < 0 or samples.max() > top:
            raise ValueError(f"{source}: {image.mode} samples outside 0..{top}; convert it to 8-bit RGB")
        image = Image.fromarray((samples * 255 // top).astype(np.uint8), mode="L")
    elif image.mode == "F":
        raise ValueError(
            f"{source}: 32-bit float pixels (mode F) have no known range; convert it to 8-bit RGB"
        )
    return image.convert("RGB")


@dataclass(frozen=True)
class EmbeddedImage:
    """An encoded image held inside a data file (a parquet row's `image` bytes), named for messages
    by where it came from, e.g. `data/test-00000-of-00003.parquet row 17`."""

    source: str
    data: bytes = field(repr=False)

    def __str__(self) -> str:
        return self.source


class ImageReadError(ValueError):
    """An image file that cannot be read: missing, not an image, truncated, too large to open
    safely (a decompression bomb) or of a pixel mode with no known range."""


def read_rgb(path: str | Path | EmbeddedImage) -> Image.Image:
    """The image at `path` (or held in an `EmbeddedImage`) as `to_rgb` gives it, decoded completely
    (the file is closed after). ImageReadError naming the file when it cannot be."""
    try:
        with Image.open(io.BytesIO(path.data) if isinstance(path, EmbeddedImage) else path) as image:
            image.load()  # every pixel: a truncated file fails here, not later in a batch
            return to_rgb(image, path)
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{path}: refused as a decompression bomb ({error})") from None
    except ValueError as error:
        raise ImageReadError(str(error) if str(path) in str(error) else f"{path}: {error}") from None
    except (OSError, SyntaxError) as error:  # PIL reports some corrupt headers as SyntaxError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        if isinstance(error, UnidentifiedImageError):
            reason = "no image format PIL knows"  # its own message names an internal buffer
        raise ImageReadError(f"{path}: unreadable image ({type(error).__name__}: {reason})") from None
