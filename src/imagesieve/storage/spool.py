"""Private local spool folders: where a remote shard is read from and an output is written before upload.

Each is a fresh folder made by `tempfile.mkdtemp` (mode 0700, a random name created exclusively, so
no other user can plant or read files in it) under $TMPDIR, and deleted with all it holds when the
block ends, also on error. It needs room for one shard per worker.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

SPOOL_PREFIX = "imagesieve-spool-"


def spool_folder_path() -> str:
    """A fresh private spool folder; the caller deletes it."""
    return tempfile.mkdtemp(prefix=SPOOL_PREFIX)


@contextmanager
def spool_folder() -> Iterator[str]:
    folder = spool_folder_path()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
