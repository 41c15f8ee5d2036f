"""Fixtures: tiny real shards (real photo bytes, written by webdataset's TarWriter) in tmp_path."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image


@pytest.fixture(params=["python scanner", "compiled parser"])
def both_tar_parsers(request, monkeypatch):
    """Run a test with each tar header parser. `read_table` reads with the Python scanner while this
    process has scanned fewer members than `scan_first` (0 by default): a count far below 0 keeps it there."""
    from imagesieve import shards

    monkeypatch.setattr(shards, "_members_scanned", -10**12 if request.param == "python scanner" else 0)
    return request.param


@cache
def photo_tiles() -> tuple[np.ndarray, ...]:
    """Distinct 64x64 RGB tiles of real photos (scikit-image's bundled data)."""
    import skimage.data

    tiles = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photo = getattr(skimage.data, name)()
        for row in range(0, photo.shape[0] - 64, 96):
            for col in range(0, photo.shape[1] - 64, 96):
                tile = photo[row:row + 64, col:col + 64]
                if tile.std() > 12:
                    tiles.append(np.ascontiguousarray(tile))
    return tuple(tiles)


def encode(array: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    kwargs = {"quality": quality} if fmt in ("jpeg", "webp") else {}
    Image.fromarray(array).save(buffer, format=fmt.upper(), **kwargs)
    return buffer.getvalue()


EXT_FORMAT = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "bmp": "bmp", "gif": "gif",
              "tiff": "tiff", "tif": "tiff"}


@pytest.fixture
def make_shard(tmp_path) -> Callable[..., str]:
    """make_shard(name, n=8, ext="jpg", start=0, keys=None) -> path of a tar written by webdataset.TarWriter.

    Sample i has KEY.<ext> (a real photo tile), KEY.txt and KEY.json.
    """
    import webdataset as wds

    def make(name: str = "00000.tar", n: int = 8, ext: str = "jpg", start: int = 0,
             keys: list[str] | None = None, folder: str = "shards") -> str:
        tiles = photo_tiles()
        keys = keys or [f"{start + i:08d}" for i in range(n)]
        path = os.path.join(tmp_path, folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with wds.TarWriter(path, encoder=False, mtime=1_700_000_000) as sink:
            for i, key in enumerate(keys):
                tile = tiles[(start + i) % len(tiles)]
                sink.write({"__key__": key, ext: encode(tile, EXT_FORMAT[ext]),
                            "txt": f"caption {key}".encode(), "json": f'{{"key": "{key}"}}'.encode()})
        return path

    return make


def write_ids(folder, ids, column: str = "id", name: str = "ids.parquet", type_=None) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    pq.write_table(pa.table({column: pa.array(ids, type_)}), path)
    return path


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch):
    """Each test gets its own home folder, so the ID index cache (~/.cache/imagesieve) is its own."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    return home
