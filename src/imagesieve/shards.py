"""WebDataset tar shards: list the members of a shard safely, group them into samples, write shards.

Reading never loads member bytes: it records where each member's data lies (`MemberRef`), so that
removal can copy kept members byte-for-byte and never touch removed ones. The key rule is
WebDataset's: a member `dir/KEY.ext.more` belongs to sample `dir/KEY` with extension `ext.more`.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from imagesieve.tasks import MemberRef

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_ZERO_CHECK_CHUNK = 1 << 20


class ShardError(ValueError):
    """A shard cannot be read safely; the message names the shard and the member."""


def split_key(member_name: str) -> tuple[str, str] | None:
    """`dir/KEY.ext` -> (`dir/KEY`, `ext`); None when the name has no extension."""
    match = _KEY_RE.match(member_name)
    return (match.group(1), match.group(2)) if match else None


def image_extension(exts: Iterable[str]) -> str | None:
    """The sample's image member: the first extension, in tar order, that names an image format."""
    for ext in exts:
        if ext.lower() in IMAGE_EXTENSIONS or ext.lower().rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            return ext
    return None


def check_member_name(shard: str, name: str) -> None:
    """Refuse names that could write outside an output folder when extracted."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ShardError(f"{shard}: member {name!r} has an absolute path; refusing the shard")
    if ".." in re.split(r"[/\\]", name):
        raise ShardError(f"{shard}: member {name!r} contains '..'; refusing the shard")
    if "\x00" in name:
        raise ShardError(f"{shard}: member {name!r} contains a NUL byte; refusing the shard")


def iter_members(shard: str) -> Iterator[MemberRef]:
    """Every regular-file member of a tar, in order, checked for safety and completeness."""
    try:
        size_on_disk = os.path.getsize(shard)
        compressed = not _is_plain_tar(shard)
        tar = tarfile.open(shard, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"{shard}: not a readable tar file ({exc})") from exc
    with tar:
        try:
            for info in tar:
                check_member_name(shard, info.name)
                if info.isdir():
                    continue
                if not info.isreg():
                    kind = "symlink" if info.issym() else "hard link" if info.islnk() else "special file"
                    raise ShardError(f"{shard}: member {info.name!r} is a {kind}; refusing the shard")
                if compressed:
                    data = tar.extractfile(info).read()
                    yield MemberRef(info.name, shard, info.offset_data, info.size, int(info.mtime),
                                    info.mode, data=data)
                    continue
                if info.offset_data + info.size > size_on_disk:
                    raise ShardError(f"{shard}: truncated tar, member {info.name!r} ends past the end of the file")
                yield MemberRef(info.name, shard, info.offset_data, info.size, int(info.mtime), info.mode)
            end_offset = tar.offset
        except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
            raise ShardError(f"{shard}: corrupt tar ({exc})") from exc
    if not compressed:
        _check_tail_is_padding(shard, end_offset, size_on_disk)


def _is_plain_tar(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    return not (head.startswith(b"\x1f\x8b") or head.startswith(b"BZh") or head.startswith(b"\xfd7zXZ"))


def _check_tail_is_padding(shard: str, offset: int, size: int) -> None:
    """tarfile stops quietly at a bad header; anything but zeros after the last member is corruption."""
    with open(shard, "rb") as f:
        f.seek(offset)
        while chunk := f.read(_ZERO_CHECK_CHUNK):
            if chunk.count(0) != len(chunk):
                raise ShardError(f"{shard}: corrupt tar, unreadable header at byte {offset}; "
                                 "members after it would be lost")


@dataclass
class Sample:
    """The members of one sample, in tar order."""

    key: str
    members: dict[str, MemberRef]


def iter_samples(shard: str) -> Iterator[Sample]:
    """Group consecutive members by key. A key seen twice in one shard is an error."""
    seen: set[str] = set()
    current: Sample | None = None
    for ref in iter_members(shard):
        parts = split_key(ref.name)
        if parts is None:
            raise ShardError(f"{shard}: member {ref.name!r} has no extension, so it belongs to no sample")
        key, ext = parts
        if current is not None and key == current.key:
            if ext in current.members:
                raise ShardError(f"{shard}: sample {key!r} has two {ext!r} members")
            current.members[ext] = ref
            continue
        if current is not None:
            yield current
        if key in seen:
            raise ShardError(f"{shard}: key {key!r} appears twice in the shard (members not adjacent)")
        seen.add(key)
        current = Sample(key, {ext: ref})
    if current is not None:
        yield current


class AtomicShardWriter:
    """Writes a tar to a temporary name beside its final path and renames it when complete.

    Members are copied from their source byte ranges with their original names, mode and mtime;
    owner fields are zeroed so that output depends only on the input.
    """

    def __init__(self, final_path: str) -> None:
        self.final_path = final_path
        self.temp_path = f"{final_path}.tmp-{os.getpid()}"
        os.makedirs(os.path.dirname(final_path) or ".", exist_ok=True)
        self._file = open(self.temp_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._sources: dict[str, object] = {}

    def add(self, ref: MemberRef) -> None:
        info = tarfile.TarInfo(ref.name)
        info.size, info.mtime, info.mode = ref.size, ref.mtime, ref.mode
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if ref.data is not None:
            self._tar.addfile(info, io.BytesIO(ref.data))
            return
        source = self._sources.get(ref.shard)
        if source is None:
            source = self._sources[ref.shard] = open(ref.shard, "rb")
        source.seek(ref.offset)
        self._tar.addfile(info, source)

    def commit(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._close_sources()
        os.replace(self.temp_path, self.final_path)

    def abort(self) -> None:
        self._file.close()
        self._close_sources()
        if os.path.exists(self.temp_path):
            os.remove(self.temp_path)

    def _close_sources(self) -> None:
        for source in self._sources.values():
            source.close()
        self._sources.clear()

    def __enter__(self) -> AtomicShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
