"""The batched hash path gives imagehash's bits: on real photos of many sizes and formats, on every
image mode Pillow hands it, on flat and tiny images (where the DCT has ties), through the stage."""

from __future__ import annotations

import io
from functools import cache

import imagehash
import numpy as np
import pytest
from brute_force import brute_force_pairs
from conftest import encode, photo_tiles
from PIL import Image, ImageOps

from imagesieve.images.decode import ImageDecodeError
from imagesieve.matching import hash_kernels
from imagesieve.matching.hashes import DRAFT_SIZE, PERCEPTUAL, hash_image, hash_images, pack_bits
from imagesieve.matching.near_search import near_pairs
from imagesieve.stages.hashing import hash_stage
from imagesieve.stages.hashing.hash_stage import ImageHashStage
from imagesieve.stages.io.reader import ImageReaderStage
from imagesieve.workflows.sample_data import photo_crops

KINDS = tuple(PERCEPTUAL)


@cache
def crops() -> tuple[tuple[bytes, str], ...]:
    """Real-photo crops of 32-768 px a side, 20% of them PNG or WebP."""
    sides = (32, 48, 100, 128, 200, 256, 333, 512, 768)
    return tuple(photo_crops(160, sides=sides, other_formats=0.2, seed=3))


def reference(data: bytes, exact_decode: bool, mirrored: bool = False) -> dict[str, int]:
    """imagehash's own functions on the grey image imagesieve hashes: the whole image, or for JPEGs
    (without exact_decode) libjpeg's reduced-size decode of it."""
    image = Image.open(io.BytesIO(data))
    if not exact_decode and image.format == "JPEG":
        image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
    grey = image.convert("L")
    if mirrored:
        grey = ImageOps.mirror(grey)
    return {kind: pack_bits(function(grey).hash) for kind, function in PERCEPTUAL.items()}


def assert_equal_to_imagehash(data: bytes, exact_decode: bool, flip: bool = False) -> None:
    ours = hash_image(data, KINDS, "t", flip=flip, exact_decode=exact_decode).values
    assert {k: ours[k] for k in KINDS} == reference(data, exact_decode)
    if flip:
        assert {k: ours[f"{k}_flip"] for k in KINDS} == reference(data, exact_decode, mirrored=True)


@pytest.mark.parametrize("exact_decode", [False, True])
def test_a_batch_of_real_photos_of_mixed_sizes_hashes_as_imagehash_does(exact_decode):
    datas = [data for data, _ in crops()]
    results = hash_images(datas, KINDS, ["t"] * len(datas), exact_decode=exact_decode)
    for data, result in zip(datas, results, strict=True):
        assert {k: result.values[k] for k in KINDS} == reference(data, exact_decode)
    assert {ext for _, ext in crops()} == {"jpg", "png", "webp"}


def test_flip_hashes_are_imagehash_of_the_mirrored_grey_image():
    for data, _ in crops()[:30]:
        assert_equal_to_imagehash(data, exact_decode=False, flip=True)


def test_no_bit_of_the_matrix_dct_differs_from_scipys_on_real_photos():
    """The flip rate: how often the one-product DCT puts a bit on the other side of the median than
    imagehash's scipy DCT, before near-ties are recomputed. On these photos: never, and none comes
    near a tie. (On 20,000 crops with flat ones among them, 33 differed, every one an exact tie
    (a flat crop: its AC coefficients all 0) that the tie check catches and recomputes.)"""
    thumbs = []
    for data, _ in crops():
        image = Image.open(io.BytesIO(data))
        image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
        thumbs.append(np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)))
    pixels = np.stack(thumbs)
    low = (hash_kernels._DCT @ pixels.astype(np.float64) @ hash_kernels._DCT.T).reshape(len(pixels), 64)
    median = np.median(low, axis=1)
    raw_bits = hash_kernels.pack_rows((low > median[:, None]).reshape(-1, 8, 8))
    scipy_bits = np.array([hash_kernels.phash_reference(p) for p in pixels], dtype=np.uint64)
    assert (raw_bits == scipy_bits).all()
    assert np.abs(low - median[:, None]).min() > 1e3 * hash_kernels.TIE_TOLERANCE


def _photo(mode: str) -> Image.Image:
    rgb = Image.fromarray(photo_tiles()[7]).resize((150, 110))
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode, fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"),
                                       ("L", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"),
                                       ("RGBA", "WEBP"), ("CMYK", "TIFF"), ("P", "GIF"), ("RGB", "BMP")])
@pytest.mark.parametrize("exact_decode", [False, True])
def test_every_image_mode_hashes_as_imagehash_does(mode, fmt, exact_decode):
    buffer = io.BytesIO()
    _photo(mode).save(buffer, format=fmt)
    assert_equal_to_imagehash(buffer.getvalue(), exact_decode, flip=True)


@pytest.mark.parametrize("exact_decode", [False, True])
def test_a_16_bit_png_hashes_as_its_8_bit_version_not_as_a_blank(exact_decode):
    """imagehash clips 16-bit values to white (every 16-bit photo hashes alike, so any two would be
    removed as duplicates); imagesieve scales them to 8 bits first."""
    hashes = []
    for k in (3, 7, 11):
        grey = Image.fromarray(photo_tiles()[k]).resize((150, 110)).convert("L")
        wide, narrow = io.BytesIO(), io.BytesIO()
        Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257).save(wide, format="PNG")
        grey.save(narrow, format="PNG")
        assert Image.open(io.BytesIO(wide.getvalue())).mode == "I;16"
        ours = hash_image(wide.getvalue(), ("phash", "dhash"), "x", exact_decode=exact_decode).values
        assert ours == hash_image(narrow.getvalue(), ("phash", "dhash"), "x", exact_decode=exact_decode).values
        hashes.append(ours["phash"])
    assert len(set(hashes)) == 3


def test_an_exif_rotated_jpeg_is_hashed_as_stored_as_imagehash_does():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    _photo("RGB").save(buffer, format="JPEG", exif=exif)
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    for exact_decode in (False, True):
        assert_equal_to_imagehash(data, exact_decode)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (8, 8), (9, 8), (31, 33), (1000, 3), (3, 700)])
@pytest.mark.parametrize("content", ["flat", "two-tone", "photo"])
def test_tiny_flat_and_synthetic_images_where_the_dct_ties_hash_as_imagehash_does(size, content):
    if content == "flat":
        image = Image.new("L", size, 128)
    elif content == "two-tone":
        image = Image.fromarray(((np.indices(size[::-1]).sum(axis=0) % 2) * 255).astype(np.uint8))
    else:
        image = Image.fromarray(photo_tiles()[2]).resize(size)
    for fmt in ("PNG", "JPEG"):
        assert_equal_to_imagehash(encode(np.asarray(image), fmt.lower()), exact_decode=False, flip=True)


def test_a_tie_is_recomputed_with_imagehashs_steps():
    flat = np.full((3, 32, 32), 77, np.uint8)
    flat[1, :, :16] = 200  # two-tone: coefficients of equal size, ties around the median
    codes = hash_kernels.phash_codes(flat)
    expected = [pack_bits(imagehash.phash(Image.fromarray(p)).hash) for p in flat]
    assert codes.tolist() == expected


def test_every_flat_thumbnail_hashes_as_imagehash_does_without_scipys_dct():
    flat = np.repeat(np.arange(256, dtype=np.uint8), 32 * 32).reshape(256, 32, 32)
    expected = [pack_bits(imagehash.phash(Image.fromarray(p)).hash) for p in flat]
    assert hash_kernels.phash_codes(flat).tolist() == expected
    assert [int(hash_kernels.phash_reference(p)) for p in flat] == expected


def test_unreadable_images_in_a_batch_leave_the_others_hashed():
    datas = [crops()[0][0], b"", b"\xff\xd8\xff\xe0garbage", crops()[1][0]]
    results = hash_images(datas, ("bytes_hash", "phash"), [f"sample {i}" for i in range(4)])
    assert [type(r).__name__ for r in results] == ["ImageHashes", "ImageDecodeError", "ImageDecodeError",
                                                   "ImageHashes"]
    assert "sample 2" in str(results[2])
    assert results[3].values["phash"] == reference(datas[3], False)["phash"]


def test_the_stage_hashes_a_shard_in_chunks_as_one_image_at_a_time(make_shard, monkeypatch):
    monkeypatch.setattr(hash_stage, "CHUNK", 3)
    batch = ImageReaderStage().read_shard(make_shard(n=8, ext="png"), "00000.tar")
    ImageHashStage(kinds=("bytes_hash", "phash", "dhash"), flip=True).process(batch)
    for image in batch.data:
        alone = hash_image(image.read_bytes(), ("bytes_hash", "phash", "dhash"), "t", flip=True)
        assert {k: image.metadata[k] for k in alone.values} == alone.values
        assert image.metadata["file_size"] == len(image.read_bytes())


def test_the_stage_names_a_truncated_member(make_shard):
    batch = ImageReaderStage().read_shard(make_shard(n=2), "00000.tar")
    ref = batch.data[1].members[batch.data[1].image_ext]
    ref.size += 10**9
    with pytest.raises(ValueError, match="is truncated"):
        ImageHashStage().process(batch)
    with pytest.raises(ImageDecodeError):
        hash_image(b"", ("phash",), "x")


@pytest.mark.parametrize("n, other_n, t", [(3000, None, 10), (500, 700, 12), (40, None, 30), (1, None, 5)])
def test_the_exhaustive_small_search_and_the_indexed_search_agree(n, other_n, t, monkeypatch):
    rng = np.random.default_rng(n)
    codes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64)
    codes[n // 2:] = codes[: n - n // 2] ^ np.uint64(0b1101)  # planted near pairs
    other = None if other_n is None else codes[rng.integers(0, n, size=other_n)] ^ np.uint64(1 << 40)
    small = near_pairs(codes, t, other=other)
    monkeypatch.setattr("imagesieve.matching.near_search.EXHAUSTIVE_PAIRS", -1)
    indexed = near_pairs(codes, t, other=other)
    for a, b in zip(small, indexed, strict=True):
        assert np.array_equal(a, b)
    assert set(zip(small[0].tolist(), small[1].tolist(), strict=True)) == brute_force_pairs(codes, t, other)
