"""A member's name: the sample it belongs to, whether it names an image, and whether it is safe to extract.

The key rule is WebDataset's: a member `dir/KEY.ext.more` belongs to sample `dir/KEY` with extension
`ext.more`. `ShardError`, which every module of `tar` raises, lives here: the lowest of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# What names an image, in any case: a sample's member in a tar, and a file in an image folder (`inputs`).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
IMAGE_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_EXTENSIONS)  # of loose image files, in any case


class ShardError(ValueError):
    """A shard cannot be read safely; the message names the shard and the member."""


def split_key(member_name: str) -> tuple[str, str] | None:
    """`dir/KEY.ext` -> (`dir/KEY`, `ext`); None when the file name has no extension or starts with a dot.

    The same split as webdataset's `^((?:.*/|)[^.]+)[.]([^/]*)$`, with string methods (5x faster).
    """
    start = member_name.rfind("/") + 1
    dot = member_name.find(".", start)
    if dot <= start:
        return None
    return member_name[:dot], member_name[dot + 1:]


# Which member of a sample is its image (the one hashed, embedded and shown), in rank order:
# 1. a member whose whole extension is an image extension (`KEY.jpg`, any case), by the order of
#    IMAGE_EXTENSIONS (jpg first: NeMo Curator reads only jpg);
# 2. else a compound one whose last part is (`KEY.alpha.png`, `KEY.depth.png`: masks, alpha, depth
#    maps), by the order of that last part;
# ties (`KEY.jpg` and `KEY.JPG`, `KEY.seg.png` and `KEY.alpha.png`) go to the first in tar order.
# The compiled grouping (`grouping_kernel`) applies the same rule. Raise IMAGE_RULE when it changes:
# tables made from images (hashes) record it, so a rerun remakes those made under another rule.
IMAGE_RULE = 2
_RANK = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def image_rank(ext: str) -> int | None:
    """The rank of a member's extension as a sample's image (lower wins, see IMAGE_RULE), or None when it
    names no image. Letters are compared in ASCII only, as the compiled pass does."""
    ext = ext.translate(_ASCII_LOWER)
    rank = _RANK.get(ext)
    if rank is not None:
        return rank
    dot = ext.rfind(".")
    if dot < 0:
        return None
    rank = _RANK.get(ext[dot + 1:])
    return None if rank is None else len(IMAGE_EXTENSIONS) + rank


def image_extension(exts: Iterable[str]) -> str | None:
    """The sample's image member among its extensions (in tar order), by the rule above; None if none."""
    best, best_rank = None, None
    for ext in exts:
        rank = image_rank(ext)
        if rank is not None and (best_rank is None or rank < best_rank):
            best, best_rank = ext, rank
    return best


def check_member_name(shard: str, name: str) -> None:
    """Refuse names that could write outside an output folder when extracted."""
    if ".." not in name and "\\" not in name and "\x00" not in name and ":" not in name[:2] \
            and not name.startswith("/"):
        return  # the common, safe case, without regular expressions
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[/\\]", name):
        raise ShardError(f"{shard}: member {name!r} has an absolute path; refusing the shard")
    if ".." in re.split(r"[/\\]", name):
        raise ShardError(f"{shard}: member {name!r} contains '..'; refusing the shard")
    if "\x00" in name:
        raise ShardError(f"{shard}: member {name!r} contains a NUL byte; refusing the shard")
