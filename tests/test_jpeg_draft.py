"""The JPEG short cut (`jpeg_draft.draft_grey`) gives exactly what Pillow's open + draft + load gives,
on every kind of JPEG it takes, and hands every other file back to Pillow (None)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import photo_tiles
from PIL import Image

from imagesieve.images.decode import MAX_PIXELS
from imagesieve.images.jpeg_draft import draft_grey, draft_scale, jpeg_frame
from imagesieve.workflows.sample_data import photo_crops

SIDE = 32
ORIENTED = Image.Exif()
ORIENTED[0x0112] = 6  # rotate to display: hashed as stored, as imagehash does


def pillow_draft(data: bytes) -> tuple[Image.Image, tuple[int, int]]:
    image = Image.open(io.BytesIO(data))
    size = image.size
    image.draft("L", (SIDE, SIDE))
    image.load()
    return image, size


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def assert_same_as_pillow(data: bytes) -> None:
    ours, theirs = draft_grey(data, SIDE, MAX_PIXELS), pillow_draft(data)
    assert ours is not None
    assert ours[1] == theirs[1] and ours[0].mode == theirs[0].mode == "L" and ours[0].size == theirs[0].size
    assert ours[0].tobytes() == theirs[0].tobytes()


def photo(size: tuple[int, int] = (150, 110), k: int = 7) -> Image.Image:
    return Image.fromarray(photo_tiles()[k]).resize(size)


def test_real_photo_crops_of_many_sizes_and_qualities():
    crops = [data for data, ext in photo_crops(120, sides=(8, 31, 32, 33, 64, 100, 255, 256, 257, 512, 768),
                                               other_formats=0, seed=5)]
    for data in crops:
        assert_same_as_pillow(data)


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"subsampling": 0}, {"subsampling": 1},
                                     {"quality": 100}, {"quality": 5}, {"optimize": True},
                                     {"exif": ORIENTED.tobytes()},
                                     {"icc_profile": b"\x00" * 300}, {"comment": b"a comment"}])
def test_encoder_options(options):
    assert_same_as_pillow(jpeg(photo(), **options))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (31, 200), (32, 32), (64, 63), (257, 65), (1000, 9)])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_sizes_and_grey_jpegs(size, mode):
    assert_same_as_pillow(jpeg(photo(size).convert(mode)))


def test_restart_markers_in_the_scan():
    """Pillow saves restart intervals as DRI segments (before the scan) and RSTn markers (in it)."""
    data = jpeg(photo((300, 200)), restart_marker_blocks=2)
    assert b"\xff\xdd" in data[:data.index(b"\xff\xda")]
    assert_same_as_pillow(data)


def test_a_multi_picture_file_reads_as_its_first_picture():
    buffer = io.BytesIO()
    photo().save(buffer, format="MPO", save_all=True, append_images=[photo(k=3)])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    assert_same_as_pillow(buffer.getvalue())


def test_the_scale_is_the_one_pillow_picks():
    for width in range(1, 300, 7):
        for height in (1, 16, 31, 32, 63, 64, 65, 127, 128, 255, 256, 257, 600):
            image = Image.open(io.BytesIO(jpeg(Image.new("RGB", (width, height)))))
            image.draft("L", (SIDE, SIDE))
            assert image.decoderconfig[0] == draft_scale(width, height, SIDE), (width, height)


def test_files_it_does_not_take_are_left_to_pillow():
    good = jpeg(photo((300, 200)))
    scan = good.index(b"\xff\xda")
    frame = good.index(b"\xff\xc0")
    cases = {
        "CMYK": jpeg(photo().convert("CMYK")),
        "truncated": good[:len(good) // 2],
        "cut in the header": good[:frame + 6],
        "junk between segments": good[:scan] + b"\x00" + good[scan:],
        "fill bytes": good[:scan] + b"\xff" + good[scan:],
        "two frames": good[:scan] + good[frame:frame + 2 + int.from_bytes(good[frame + 2:frame + 4], "big")]
        + good[scan:],
        "no frame": good[:frame] + good[frame + 2 + int.from_bytes(good[frame + 2:frame + 4], "big"):],
        "12-bit frame": good[:frame + 4] + b"\x0c" + good[frame + 5:],
        "PNG": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "empty": b"",
        "corrupt scan": good[:scan + 40] + bytes(range(256)) * 4 + good[scan + 40 + 1024:],
    }
    for name, data in cases.items():
        assert draft_grey(data, SIDE, MAX_PIXELS) is None, name
    assert draft_grey(good, SIDE, 300 * 200 - 1) is None  # over the pixel limit: Image.open refuses it
    assert jpeg_frame(good) == (300, 200, 3)


def test_a_corrupt_scan_that_libjpeg_reads_to_the_end_is_read_as_pillow_reads_it():
    """libjpeg recovers from some damage in the entropy-coded data (with a warning); Pillow's load then
    gives that image, and so does the short cut."""
    good = jpeg(photo((300, 200)))
    scan = good.index(b"\xff\xda")
    rng = np.random.default_rng(0)
    for _ in range(20):
        data = bytearray(good)
        data[rng.integers(scan + 20, len(data) - 2)] ^= 0x55
        try:
            theirs = pillow_draft(bytes(data))
        except OSError:
            assert draft_grey(bytes(data), SIDE, MAX_PIXELS) is None
            continue
        ours = draft_grey(bytes(data), SIDE, MAX_PIXELS)
        assert ours is not None and ours[0].tobytes() == theirs[0].tobytes()
