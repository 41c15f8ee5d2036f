"""What the per-image stages (hashing, embedding) share: the error policy, and fields of a sample's .json."""

from __future__ import annotations

import json
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
    return {f"json.{name}": record.get(name) for name in fields}
