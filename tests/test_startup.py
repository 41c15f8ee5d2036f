"""What a `find --method phash` loads: libraries that only some runs need stay unloaded, since each
costs every process that loads it 0.1-0.5 s, a large share of a small run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from conftest import encode, photo_tiles

import imagesieve
from imagesieve.workflows.sample_data import write_shard

PROBE = """
import json, sys
from contextlib import redirect_stdout
from io import StringIO
from imagesieve.cli import main
with redirect_stdout(StringIO()) as out:
    main(sys.argv[1:])
from PIL import Image
heavy = ("numba", "scipy", "pandas", "tqdm", "importlib.metadata")
print(json.dumps({"summary": json.loads(out.getvalue()), "loaded": [m for m in heavy if m in sys.modules],
                  "plugins": Image.ID}))
"""


def run_find(tmp_path, *args: str) -> dict:
    """Run `find` in a fresh interpreter (with one worker: in that interpreter) and say what it loaded."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(imagesieve.__file__))}
    result = subprocess.run([sys.executable, "-c", PROBE, "find", "--quiet", "--json", *args],
                            capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_phash_find_loads_neither_numba_nor_scipy_nor_pandas_nor_tqdm(tmp_path):
    tiles = photo_tiles()
    black = np.zeros((40, 50, 3), np.uint8)  # a flat image: a tie in the DCT, resolved without scipy
    samples = [{"jpg": encode(tiles[i])} for i in range(6)] + [{"jpg": encode(black)}, {"png": encode(tiles[7], "png")},
                                                               {"webp": encode(tiles[8], "webp")},
                                                               {"png": encode(tiles[9], "ico")}]  # read all the same
    os.makedirs(tmp_path / "shards")
    write_shard(str(tmp_path / "shards" / "00000.tar"), samples, [f"{i:04d}" for i in range(len(samples))])
    found = run_find(tmp_path, "--workers", "1", str(tmp_path / "shards"), str(tmp_path / "out"))
    assert found["loaded"] == []
    assert found["summary"]["images"] == len(samples) and found["summary"]["skipped"] == 0
    plugins = found["plugins"]
    assert plugins[:6] == ["BMP", "DIB", "GIF", "JPEG", "PPM", "PNG"] and "WEBP" in plugins  # common formats first
