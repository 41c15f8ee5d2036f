"""Where imagesieve keeps what it can rebuild (ID indexes): one rule for the command line and the library."""

from __future__ import annotations

import os


def default_cache_dir() -> str:
    """$IMAGESIEVE_CACHE_DIR, else $XDG_CACHE_HOME/imagesieve, else ~/.cache/imagesieve."""
    if os.environ.get("IMAGESIEVE_CACHE_DIR"):
        return os.environ["IMAGESIEVE_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imagesieve")
