"""A JPEG decoded small and grey as `Image.open(...)`, `draft("L", (side, side))` and `load()` decode
it, by the same libjpeg decoder with the same arguments, without Pillow's header parse in Python.

Hashing needs 32x32 grey pixels: libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 size (DCT scaling) in
about 250 us; `Image.open` and `load` add ~50 us of Python around it (parsing every marker segment,
setting up the tile), a sixth of a JPEG's hashing. Here the frame header is found by walking the
segment lengths, and Pillow's JPEG decoder is called as `ImageFile.load` would call it after `draft`.

Only plain files take this way: segments with lengths from SOI to the start of scan, one 8-bit frame
of 1 or 3 components (grey or colour; CMYK is not drafted to grey), within the pixel limit, decoded
to the end without error. Anything else returns None, and the caller reads the file through
`Image.open`, so every error, and every file Pillow refuses, is Pillow's as before.
"""

from __future__ import annotations

from PIL import Image

_FRAME = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})  # SOFn
_SEGMENTS = frozenset({0xC4, 0xCC, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)})  # DHT DAC DQT DRI COM APPn
_START_OF_SCAN = 0xDA
_GET_DECODER = getattr(Image, "_getdecoder", None)  # Pillow's own lookup, private: without it, every file
                                                    # goes through Image.open


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of a plain 8-bit JPEG (see the module docstring), else None."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, frame = 2, None
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == _START_OF_SCAN:
            return frame
        if marker in _FRAME:
            if frame is not None or length < 8 or pos + 10 > len(data) or data[pos + 4] != 8:
                return None
            frame = (int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big"),
                     data[pos + 9])
        elif marker not in _SEGMENTS or length < 2:
            return None
        pos += 2 + length
    return None


def draft_scale(width: int, height: int, side: int) -> int:
    """The DCT scaling `JpegImageFile.draft` picks for a requested size of side x side: the largest of
    8, 4, 2 that leaves the image at least that size, else 1."""
    fit = min(width // side, height // side)
    return next((scale for scale in (8, 4, 2) if fit >= scale), 1)


def draft_grey(data: bytes, side: int, max_pixels: int) -> tuple[Image.Image, tuple[int, int]] | None:
    """The grey image `Image.open(data)` + `draft("L", (side, side))` + `load()` gives, and the JPEG's
    full size; None when the file does not take this way (read it with `Image.open` then)."""
    frame = jpeg_frame(data) if _GET_DECODER is not None else None
    if frame is None:
        return None
    width, height, components = frame
    if components not in (1, 3) or not 0 < width * height <= max_pixels:
        return None
    scale = draft_scale(width, height, side)
    size = ((width + scale - 1) // scale, (height + scale - 1) // scale)
    image = Image.new("L", size)
    # what ImageFile.load does for a drafted JPEG's one tile: ("L", "") are its raw mode and JPEG mode,
    # (scale, 0) the decoder configuration draft sets
    decoder = _GET_DECODER("L", "jpeg", ("L", ""), (scale, 0))
    try:
        decoder.setimage(image.im, (0, 0, *size))
        status, error = decoder.decode(data)
    finally:
        decoder.cleanup()
    if status >= 0 or error < 0:  # wants more data (truncated) or failed: Image.open says what is wrong
        return None
    return image, (width, height)
