"""Compressed shards (gz, bz2, xz): known by their first bytes, read through `tarfile`, written alike."""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

from imagesieve.tar.names import ShardError, check_member_name
from imagesieve.tasks import MemberRef

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


def _iter_compressed(shard: str) -> Iterator[MemberRef]:
    """Compressed tars cannot be copied by byte range; their members' bytes are read into memory."""
    try:
        with tarfile.open(shard, mode="r:*") as tar:
            for info in tar:
                check_member_name(shard, info.name)
                if info.isdir():
                    continue
                if not info.isreg():
                    kind = "symlink" if info.issym() else "hard link" if info.islnk() else "special file"
                    raise ShardError(f"{shard}: member {info.name!r} is a {kind}; refusing the shard")
                yield MemberRef(info.name, shard, info.offset_data, info.size, int(info.mtime), info.mode,
                                data=tar.extractfile(info).read())
    except (tarfile.TarError, EOFError) as exc:
        raise ShardError(f"{shard}: corrupt compressed tar ({exc})") from exc
