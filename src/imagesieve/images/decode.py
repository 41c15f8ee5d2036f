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


def load_plugins() -> None:
    """Load the Pillow plugins of the image extensions a shard holds (before workers fork, so that
    they inherit them), the common formats first: `Image.open` tries plugins in the order they were
    loaded. Not all of them (`Image.init()`, ~25 ms): `Image.open` loads the rest itself when none of
    these reads a file; and `Image.init()` alone loads them alphabetically, which puts IM, IMT and IPTC
    (whose plugins can only tell a file is not theirs by failing to open it) before JPEG."""
    Image.preinit()  # BMP, GIF, JPEG, PPM, PNG
    from PIL import TiffImagePlugin, WebPImagePlugin  # noqa: F401


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
    return to_eight_bits(image) if image.mode in _WIDE_MODES else image


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_eight_bits(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit greyscale image as 8-bit greyscale, scaled from its range. Pillow's
    `convert("L")` clips every value above 255, so every 16-bit photo would decode as a white
    image, and any two of them would match as duplicates (imagehash has that flaw; we do not copy it)."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        eight = (values.astype(np.uint16) >> 8).astype(np.uint8)
    else:
        top = float(values.max()) if values.size else 0.0
        scale = 255.0 if 0 < top <= 1.0 and image.mode == "F" else 1.0 if top <= 255 else 255.0 / 65535.0 \
            if top <= 65535 else 255.0 / top
        eight = np.clip(values.astype(np.float64) * scale, 0, 255).astype(np.uint8)
    return Image.fromarray(eight, "L")


def decode_rgb(data: bytes, where: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> RGB uint8 array (H, W, 3)."""
    image = load(open_image(data, where, max_pixels), where)
    return np.asarray(image.convert("RGB"))
