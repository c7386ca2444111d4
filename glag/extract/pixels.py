"""Decoding one image file to 8-bit RGB (or L) the same way everywhere glag reads images.

Refused in one line naming the file: what Pillow cannot read, a truncated file, and a decompression bomb
(an image that declares more pixels than Pillow's safety limit, e.g. a 1 KB PNG of 50000 x 50000).
16-bit greyscale (Pillow's I;16 and I modes) is scaled to 8 bits (value / 257), not clipped to white.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from glag.errors import GlagError

HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_8bit(im):
    """``im`` with 16-bit (or 32-bit integer) greyscale scaled to 8-bit L; other modes as they are."""
    from PIL import Image

    if im.mode not in HIGH_DEPTH:
        return im
    a = np.asarray(im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ValueError(
            f"{im.mode} values span {a.min()}..{a.max()}, outside the 16-bit range glag converts"
        )
    return Image.fromarray(np.rint(a / 257.0).astype(np.uint8), mode="L")


def open_image(source, name, mode: str = "RGB"):
    """The image at ``source`` (a path or a file object) decoded and converted to ``mode``; ``name`` is how
    errors refer to it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over half the limit: refuse too
            with Image.open(source) as im:
                im.load()
                return to_8bit(im).convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        size = re.search(r"\((\d+) pixels\)", str(exc))
        raise GlagError(
            f"'{name}' declares {size.group(1) + ' pixels' if size else 'a size'}, over Pillow's "
            f"safety limit of {Image.MAX_IMAGE_PIXELS} (a decompression bomb?); remove or resize it"
        ) from None
    except UnidentifiedImageError:
        raise GlagError(f"'{name}' is not an image Pillow can read; remove or replace it") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise GlagError(f"'{name}' cannot be decoded ({exc}); remove or replace it") from None


def read_rgb(path: Path, data: bytes | None = None) -> np.ndarray:
    """uint8 RGB pixels of an image file (``data``: its bytes, when already read)."""
    import io

    return np.asarray(open_image(io.BytesIO(data) if data is not None else path, path))
