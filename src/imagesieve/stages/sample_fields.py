"""What the per-image stages (hashing, embedding) share: the error policy, and fields of a sample's .json."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from imagesieve.tasks import ImageObject

ON_ERROR = ("fail", "skip")  # an unreadable image stops the run, or is kept with its `error` recorded


def check_on_error(value: str) -> None:
    if value not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {value!r}")


def json_values(image: ImageObject, fields: tuple[str, ...], where: str) -> dict[str, Any]:
    """`json.<field>` of each of `fields` from the sample's .json member (e.g. a score for a keep policy)."""
    if "json" not in image.members:
        raise ValueError(f"{where}: has no .json member to read {list(fields)} from")
    try:
        record = json.loads(image.read_bytes("json"))
    except ValueError as exc:
        raise ValueError(f"{where}: .json member is not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{where}: .json member holds {type(record).__name__}, not an object with {list(fields)}")
    return {f"json.{name}": json_number(record.get(name), name, where) for name in fields}


def json_number(value: Any, name: str, where: str) -> float | None:
    """A .json field a keep policy ranks by, as a float (None when absent): anything but a finite number
    is refused naming the sample, never ranked by accident or left to a raw Arrow error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: .json field {name!r} must be a number to rank by, but holds {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{where}: .json field {name!r} must be a finite number to rank by, but holds "
                         f"{str(value)[:40]}")
    return number


def image_bytes(images: list[ImageObject]) -> list[bytes]:
    """The encoded image bytes of each sample, reading a shard through one open file rather than one
    open per member (the per-image stages read thousands of small members per shard)."""
    out = []
    shard, fd = None, -1
    try:
        for image in images:
            ref = image.members[image.image_ext]
            if ref.data is not None:
                out.append(ref.data)
                continue
            if ref.shard != shard:  # samples come shard by shard; image folders: one file each
                if fd >= 0:
                    os.close(fd)
                fd = -1
                fd, shard = os.open(ref.local_path(), os.O_RDONLY), ref.shard
            content = os.pread(fd, ref.size, ref.offset)
            if len(content) != ref.size:
                raise ValueError(f"{ref.shard}: member {ref.name!r} is truncated")
            out.append(content)
    finally:
        if fd >= 0:
            os.close(fd)
    return out
