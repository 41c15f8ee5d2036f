"""Compressed shards (gz, bz2, xz): known by their first bytes, listed by `listing` (tarfile), written alike."""

from __future__ import annotations

import bz2
import gzip
import lzma
from typing import BinaryIO

_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ": "xz"}


def compression_of(path: str) -> str | None:
    """How a shard is compressed, by its first bytes (never its name): "gz", "bz2", "xz" or None."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


def _compressed_writer(raw: BinaryIO, compression: str | None) -> BinaryIO:
    if compression == "gz":
        return gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0)  # no temp name, no time: reproducible
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="wb")
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="wb")
    return raw
