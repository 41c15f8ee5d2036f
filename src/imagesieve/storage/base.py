"""What the backends share with the run folder's atomic writes and locks: the names of our temp files
and the error of a folder another run holds. Kept apart so that a backend needs nothing above it."""

from __future__ import annotations

import os
import re

_TEMP_MARK = ".imagesieve-tmp-"
_TEMP_NAME = re.compile(r"^\..+" + re.escape(_TEMP_MARK) + r"\d+$")


def temp_name(path: str) -> str:
    """Where `path` is written before it is renamed into place: hidden (Parquet dataset readers and
    globs skip it) and named `.NAME.imagesieve-tmp-PID`, a name no other program uses, so that a
    rerun can delete what a killed run left without ever touching a file it did not write."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{_TEMP_MARK}{os.getpid()}")


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


class OutputInUseError(RuntimeError):
    """Another run is writing to the same output folder."""
