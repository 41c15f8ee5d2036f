"""Per-image hashes: exact (encoded bytes, decoded pixels) and perceptual (pHash, dHash, aHash, wHash, and
the vertical dHash that, with dHash, confirms pHash's pairs).

Perceptual hashes are the `imagehash` library's, packed into a 64-bit integer (bit i of the 8x8
hash, row-major, is bit 63-i: the same order as `str(imagehash.phash(...))`). Each image is decoded
once to grey and resized by Pillow exactly as imagehash does; the last steps (pHash's DCT and median,
dHash's and aHash's comparisons) then run over the whole batch at once (`hash_kernels`), with the
same bits. They work on 32x32 pixels or fewer, so JPEGs are decoded at reduced size by libjpeg's
DCT scaling (`Image.draft`), several times faster than a full decode; the hashes then differ from
those of a full decode by a few bits at most (measured in BENCHMARKS.md). `exact_decode=True`
decodes fully and gives bit-for-bit the values of `imagehash` on the same file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
import xxhash
from PIL import Image, ImageOps

from imagesieve.images.decode import MAX_PIXELS, ImageDecodeError, load, open_image
from imagesieve.images.jpeg_draft import draft_grey
from imagesieve.matching.hash_kernels import ahash_codes, dhash_codes, dhash_vertical_codes, phash_codes

PERCEPTUAL = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash,
              "whash": imagehash.whash, "dhash_vertical": imagehash.dhash_vertical}
EXACT = ("bytes_hash", "pixel_hash")
ALL_KINDS = (*EXACT, *PERCEPTUAL)
DRAFT_SIZE = 32  # JPEGs are decoded to at least the pHash input size (32x32), by DCT scaling
# the kinds computed over the batch: (width, height) imagehash resizes the grey image to, and the kernel
BATCHED: dict[str, tuple[tuple[int, int], Callable[[np.ndarray], np.ndarray]]] = {
    "phash": ((32, 32), phash_codes), "dhash": ((9, 8), dhash_codes), "ahash": ((8, 8), ahash_codes),
    "dhash_vertical": ((8, 9), dhash_vertical_codes)}


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
    """Compute the hashes named in `kinds` for one encoded image (see `hash_images`)."""
    result = hash_images([data], kinds, [where], flip, exact_decode)[0]
    if isinstance(result, ImageDecodeError):
        raise result
    return result


def hash_images(datas: Sequence[bytes], kinds: tuple[str, ...], wheres: Sequence[str], flip: bool = False,
                exact_decode: bool = False) -> list[ImageHashes | ImageDecodeError]:
    """The hashes named in `kinds` for each encoded image, or the error that names why it could not be
    read (`wheres[i]` names image i in it).

    With `flip`, each perceptual hash is also computed on the mirrored image (`<kind>_flip`), so
    that a horizontally flipped copy can be matched.
    """
    # (kind, mirrored) -> one grey thumbnail per image, (n, rows, cols), filled image by image
    sides = (False, True) if flip else (False,)
    small = {(kind, mirrored): np.empty((len(datas), size[1], size[0]), np.uint8)
             for kind, (size, _) in BATCHED.items() if kind in kinds for mirrored in sides}
    results: list[ImageHashes | ImageDecodeError] = []
    for i, (data, where) in enumerate(zip(datas, wheres, strict=True)):
        try:
            results.append(_hash_one(data, kinds, where, flip, exact_decode, small, i))
        except ImageDecodeError as exc:
            results.append(exc)
    readable = [i for i, r in enumerate(results) if isinstance(r, ImageHashes)]
    for (kind, mirrored), pixels in small.items():
        codes = BATCHED[kind][1](pixels[readable]).tolist()
        name = f"{kind}_flip" if mirrored else kind
        for i, code in zip(readable, codes, strict=True):
            results[i].values[name] = code
    return results


def _hash_one(data: bytes, kinds: tuple[str, ...], where: str, flip: bool, exact_decode: bool,
              small: dict[tuple[str, bool], np.ndarray], row: int) -> ImageHashes:
    """Exact hashes and wHash of one image; the grey thumbnails of the batched kinds go to `small[...][row]`."""
    values: dict[str, int | str] = {}
    if "bytes_hash" in kinds:
        values["bytes_hash"] = xxhash.xxh3_128_hexdigest(data)
    if "pixel_hash" in kinds:
        rgb = np.asarray(load(open_image(data, where), where).convert("RGB"))
        values["pixel_hash"] = xxhash.xxh3_128_hexdigest(f"{rgb.shape}".encode() + rgb.tobytes())
    if not any(k in PERCEPTUAL for k in kinds):
        image = open_image(data, where)
        return ImageHashes(*image.size, (image.format or "").lower(), values)
    grey, (width, height), fmt = _grey_image(data, where, exact_decode)
    views = {False: grey, True: ImageOps.mirror(grey)} if flip else {False: grey}
    for (kind, mirrored), pixels in small.items():  # imagehash: convert("L") (a no-op here), Lanczos resize
        thumb = views[mirrored].resize(BATCHED[kind][0], Image.Resampling.LANCZOS)
        pixels[row] = np.frombuffer(thumb.tobytes(), np.uint8).reshape(pixels.shape[1:])
    if "whash" in kinds:  # its size depends on the image's: one at a time, by imagehash
        for mirrored, view in views.items():
            values["whash_flip" if mirrored else "whash"] = pack_bits(imagehash.whash(view).hash)
    return ImageHashes(width, height, fmt, values)


def _grey_image(data: bytes, where: str, exact_decode: bool) -> tuple[Image.Image, tuple[int, int], str]:
    """The grey image imagehash hashes (a JPEG decoded at reduced size unless `exact_decode`), and the
    image's full size and format."""
    if not exact_decode:
        drafted = draft_grey(data, DRAFT_SIZE, MAX_PIXELS)
        if drafted is not None:  # a plain JPEG, decoded without Image.open's header parse: the same pixels
            return *drafted, "jpeg"
    image = open_image(data, where)
    size, fmt = image.size, (image.format or "").lower()
    if not exact_decode and fmt == "jpeg":
        image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
    return _grey(load(image, where)), size, fmt


def _grey(image: Image.Image) -> Image.Image:
    """imagehash's `convert("L")`, without its copy of an image that is grey already (a JPEG decoded
    by `draft("L", ...)`): the same pixels."""
    return image if image.mode == "L" else image.convert("L")
