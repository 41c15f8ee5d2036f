"""Listing what a run reads: every file of an input folder, local or on object storage, leaving out the
folders of earlier runs (`run_folder_on_the_way`); each folder left out is named once in a warning."""

from __future__ import annotations

import logging
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from functools import cache

from imagesieve.storage import absolute, parent, storage_for
from imagesieve.storage.base import WORK_DIR, listed_runs, run_folder_on_the_way
from imagesieve.storage.runfolder import RESERVED, holds_run, is_clean_dataset

logger = logging.getLogger(__name__)

_warned: set[str] = set()  # what a warning named already: once per run, though a run lists its input more than once


def folder_files(folder: str, storage_options: dict | None = None) -> list[str]:
    """Every file under the input folder `folder` outside the folders of earlier runs: locally `walk_files`
    (symlinked folders followed); on object storage, one recursive listing of the prefix."""
    store = storage_for(folder, storage_options)
    if store.remote:
        paths = store.list_files(folder)
        listed, earlier = listed_runs(paths), run_folder_test(storage_options, folder)
        kept = []
        for path in paths:
            away = run_folder_on_the_way(path, folder, lambda f: listed(f) and earlier(f))
            if away is None:
                kept.append(path)
            elif away.rstrip("/").rsplit("/", 1)[-1] == WORK_DIR:
                refuse_a_users_records_folder(away, storage_options)
        return kept
    return list(walk_files(folder))


def walk_files(folder: str) -> Iterator[str]:
    """Every regular file under `folder`, following symlinked folders (a dataset is often assembled from
    links) but entering each real folder once, so a link loop cannot recurse forever; never entering
    another run's folder (`run_folder_on_the_way`). A folder is read under its real path when it has one
    under `folder` (`real/`, not the link `alias -> real` that sorts before it): the folders reached
    without a link come first, then those reached only through links, each under the name of the first
    link met (fewest links first, then walk order).

    Entries that are not regular files (a broken symlink, a FIFO, a socket) hold no data to read or
    copy, and reading a FIFO would block forever: they are left out, each named in a warning."""
    seen: set[str] = set()
    holds = run_folder_test(None, folder)
    tops = deque([folder])  # the input, then each symlinked folder met, in the order met
    while tops:
        top = tops.popleft()
        for root, dirs, files in os.walk(top):  # (no link below `top` is followed here: each waits in `tops`)
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            if WORK_DIR in dirs:
                refuse_a_users_records_folder(os.path.join(root, WORK_DIR))
            dirs[:] = sorted(d for d in dirs if run_folder_on_the_way(os.path.join(root, d, "x"), root, holds) is None)
            tops.extend(os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d)))
            if holds_run(root):  # a run's output read as data (a clean dataset): its lists are not data
                files = [name for name in files if name not in RESERVED]
            for name in sorted(files):
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    yield path
                elif os.path.abspath(path) not in _warned:
                    _warned.add(os.path.abspath(path))
                    logger.warning("%s: left out, not a regular file (%s)", path, _what_it_is(path))


def refuse_a_users_records_folder(folder: str, storage_options: dict | None = None) -> None:
    """`folder` (named `_imagesieve`) is left out of every listing as a run's records; one in a folder
    that holds no run is a user's, and its files would be left out without a word: refused, naming it."""
    above = parent(folder)
    store = storage_for(folder, storage_options)
    empty = not store.remote and not any(files for _, _, files in os.walk(folder))  # (a prefix is never empty)
    if not empty and not holds_run(above, storage_options):
        raise ValueError(f"{folder}: a folder of this name holds imagesieve's records, but {above} holds no "
                         "imagesieve run, so its files would be left out of the input: rename it")


def run_folder_test(storage_options: dict | None, root: str) -> Callable[[str], bool]:
    """`holds_run` for listing the input `root`, asked once per folder, each folder it is true of named in a
    warning (once per run): a folder inside the input that holds an imagesieve run (an earlier output) is
    left out, unless it is a finished clean dataset made from other input (`is_clean_dataset`)."""
    @cache
    def holds(folder: str) -> bool:
        if not holds_run(folder, storage_options) or is_clean_dataset(folder, root, storage_options):
            return False
        if absolute(folder) not in _warned:
            _warned.add(absolute(folder))
            logger.warning("%s: left out, it holds an imagesieve run (_imagesieve/)", folder)
        return True
    return holds


def _what_it_is(path: str) -> str:
    if not os.path.exists(path):
        return "a broken symlink"
    mode = os.stat(path).st_mode
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or special file"
