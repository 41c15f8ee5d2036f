"""Hashes: bit-compatible with the imagehash library, and what JPEG draft decoding costs."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from conftest import encode, photo_tiles
from PIL import Image, ImageOps

from imagesieve.images.decode import ImageDecodeError
from imagesieve.matching.hashes import PERCEPTUAL, hash_image, pack_bits, unpack_bits
from imagesieve.matching.near_search import popcount64

KINDS = ("bytes_hash", "pixel_hash", "phash", "dhash", "ahash", "whash", "dhash_vertical")


def reference_hash(kind: str, data: bytes) -> int:
    return int(str(PERCEPTUAL[kind](Image.open(io.BytesIO(data)))), 16)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_bit_compatible_with_imagehash_on_real_photos(fmt):
    for tile in photo_tiles()[:12]:
        data = encode(tile, fmt)
        ours = hash_image(data, KINDS, "t", exact_decode=True).values
        for kind in PERCEPTUAL:
            assert ours[kind] == reference_hash(kind, data), (fmt, kind)


def test_draft_decoding_stays_within_a_few_bits_of_full_decoding():
    import skimage.data

    distances = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        data = encode(np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB")), "jpeg")
        full = hash_image(data, ("phash",), name, exact_decode=True).values["phash"]
        fast = hash_image(data, ("phash",), name).values["phash"]
        distances.append(int(popcount64(np.array([full ^ fast], dtype=np.uint64))[0]))
    assert max(distances) <= 6, distances


def test_pack_bits_matches_imagehash_hex_and_round_trips():
    data = encode(photo_tiles()[0], "png")
    h = imagehash.phash(Image.open(io.BytesIO(data)))
    assert pack_bits(h.hash) == int(str(h), 16)
    assert (unpack_bits(pack_bits(h.hash)) == h.hash).all()


def test_flip_hash_is_the_hash_of_the_mirrored_image():
    tile = photo_tiles()[3]
    data = encode(tile, "png")
    mirrored = encode(np.asarray(ImageOps.mirror(Image.fromarray(tile))), "png")
    ours = hash_image(data, ("phash",), "t", flip=True, exact_decode=True).values
    assert ours["phash_flip"] == hash_image(mirrored, ("phash",), "t", exact_decode=True).values["phash"]


def test_pixel_hash_catches_lossless_re_encodes_that_bytes_hash_misses():
    tile = photo_tiles()[5]
    png = encode(tile, "png")
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="WEBP", lossless=True)
    a = hash_image(png, KINDS, "a").values
    b = hash_image(buffer.getvalue(), KINDS, "b").values
    assert a["bytes_hash"] != b["bytes_hash"] and a["pixel_hash"] == b["pixel_hash"]


def test_records_size_and_format_before_draft_scaling():
    data = encode(np.zeros((300, 200, 3), np.uint8) + 90, "jpeg")
    result = hash_image(data, ("phash",), "t")
    assert (result.width, result.height, result.format) == (200, 300, "jpeg")


@pytest.mark.parametrize("data, message", [(b"", "empty"), (b"\xff\xd8\xff\xe0garbage", "not a readable image")])
def test_unreadable_bytes_name_the_sample(data, message):
    with pytest.raises(ImageDecodeError, match=f"shard.tar: sample 'k'.*{message}"):
        hash_image(data, ("phash",), "shard.tar: sample 'k'")


def test_truncated_jpeg_is_an_error_not_a_hash():
    data = encode(photo_tiles()[0], "jpeg")
    with pytest.raises(ImageDecodeError, match="corrupt image data"):
        hash_image(data[: len(data) // 2], ("phash",), "x", exact_decode=True)


@pytest.mark.parametrize("side, limit", [(20000, None), (2000, 1_000_000)])
def test_decompression_bomb_is_refused(side, limit):
    from imagesieve.images.decode import MAX_PIXELS, open_image

    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError, match="bomb: image is .*over the limit"):
        open_image(buffer.getvalue(), "bomb", max_pixels=limit or MAX_PIXELS)
