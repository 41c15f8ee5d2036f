"""Decoding image bytes with Pillow: one place for the pixel limit and for clear errors."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

# Refuse images above this many pixels (decompression bombs). 16k x 16k is far beyond any training image.
MAX_PIXELS = 256 * 1024 * 1024


class ImageDecodeError(ValueError):
    """Image bytes that cannot be decoded; the message names the shard and sample."""


def open_image(data: bytes, where: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open (not yet decode) image bytes, refusing empty files and decompression bombs."""
    if not data:
        raise ImageDecodeError(f"{where}: image member is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{where}: image is over the limit of pixels, a possible decompression bomb "
                               f"({exc})") from exc
    except Exception as exc:
        raise ImageDecodeError(f"{where}: not a readable image ({exc})") from exc
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
        raise ImageDecodeError(f"{where}: corrupt image data ({exc})") from exc
    return image


def decode_rgb(data: bytes, where: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> RGB uint8 array (H, W, 3)."""
    image = load(open_image(data, where, max_pixels), where)
    return np.asarray(image.convert("RGB"))
