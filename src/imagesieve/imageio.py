"""Decoding image bytes with Pillow: one place for the pixel limit and for clear errors."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image

# Refuse images above this many pixels (decompression bombs): Pillow's own hard limit (2 x its warning
# limit, 178,956,970 pixels, about 13k x 13k), so that one limit holds whichever check sees the image first.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS


class ImageDecodeError(ValueError):
    """Image bytes that cannot be decoded; the message names the shard and sample."""


def _reason(exc: Exception) -> str:
    """The library's message without object addresses (`<_io.BytesIO object at 0x7f..>`), which
    differ from run to run and would make error lists differ between identical runs."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))


def open_image(data: bytes, where: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open (not yet decode) image bytes, refusing empty files and decompression bombs."""
    if not data:
        raise ImageDecodeError(f"{where}: image member is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{where}: image is over the limit of {max_pixels} pixels, a possible "
                               f"decompression bomb ({_reason(exc)})") from exc
    except Exception as exc:
        raise ImageDecodeError(f"{where}: not a readable image ({_reason(exc)})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"{where}: image is {width}x{height} pixels, over the limit of {max_pixels} "
                               "(possible decompression bomb)")
    return image


def load(image: Image.Image, where: str) -> Image.Image:
    """Force decoding, turning Pillow's many error types into one clear error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as exc:
        raise ImageDecodeError(f"{where}: corrupt image data ({_reason(exc)})") from exc
    return image


def decode_rgb(data: bytes, where: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> RGB uint8 array (H, W, 3)."""
    image = load(open_image(data, where, max_pixels), where)
    return np.asarray(image.convert("RGB"))
