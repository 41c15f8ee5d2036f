"""Per-image hashes: exact (encoded bytes, decoded pixels) and perceptual (pHash, dHash, aHash, wHash).

Perceptual hashes are the `imagehash` library's own functions, packed into a 64-bit integer
(bit i of the 8x8 hash, row-major, is bit 63-i: the same order as `str(imagehash.phash(...))`).
They work on 32x32 pixels or fewer, so JPEGs are decoded at reduced size by libjpeg's DCT scaling
(`Image.draft`), several times faster than a full decode; the hashes then differ from those of a
full decode by a few bits at most (measured in BENCHMARKS.md). `exact_decode=True` decodes fully
and gives bit-for-bit the values of `imagehash` on the same file.
"""

from __future__ import annotations

from dataclasses import dataclass

import imagehash
import numpy as np
import xxhash
from PIL import ImageOps

from imagesieve.imageio import load, open_image

PERCEPTUAL = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash,
              "whash": imagehash.whash}
EXACT = ("bytes_hash", "pixel_hash")
ALL_KINDS = (*EXACT, *PERCEPTUAL)
DRAFT_SIZE = 32  # JPEGs are decoded to at least the pHash input size (32x32), by DCT scaling


def pack_bits(bits: np.ndarray) -> int:
    """An 8x8 boolean hash -> its 64-bit integer, first bit most significant."""
    return int.from_bytes(np.packbits(np.asarray(bits, dtype=bool).ravel()).tobytes(), "big")


def unpack_bits(value: int) -> np.ndarray:
    """The inverse of `pack_bits`."""
    return np.unpackbits(np.frombuffer(int(value).to_bytes(8, "big"), dtype=np.uint8)).astype(bool).reshape(8, 8)


@dataclass
class ImageHashes:
    """What hashing learned about one image."""

    width: int
    height: int
    format: str
    values: dict[str, int | str]


def hash_image(data: bytes, kinds: tuple[str, ...], where: str, flip: bool = False,
               exact_decode: bool = False) -> ImageHashes:
    """Compute the hashes named in `kinds` for one encoded image.

    With `flip`, each perceptual hash is also computed on the mirrored image (`<kind>_flip`), so
    that a horizontally flipped copy can be matched.
    """
    values: dict[str, int | str] = {}
    if "bytes_hash" in kinds:
        values["bytes_hash"] = xxhash.xxh3_128_hexdigest(data)
    image = open_image(data, where)
    width, height = image.size
    fmt = (image.format or "").lower()
    if "pixel_hash" in kinds:
        rgb = np.asarray(load(open_image(data, where), where).convert("RGB"))
        values["pixel_hash"] = xxhash.xxh3_128_hexdigest(f"{rgb.shape}".encode() + rgb.tobytes())
    wanted = [k for k in kinds if k in PERCEPTUAL]
    if wanted:
        if not exact_decode and fmt == "jpeg":
            image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
        gray = load(image, where).convert("L")
        mirrored = ImageOps.mirror(gray) if flip else None
        for kind in wanted:
            values[kind] = pack_bits(PERCEPTUAL[kind](gray).hash)
            if mirrored is not None:
                values[f"{kind}_flip"] = pack_bits(PERCEPTUAL[kind](mirrored).hash)
    return ImageHashes(width, height, fmt, values)
