"""Real img2dataset output, as it is: img2dataset (from PyPI) downloads real photos from a local HTTP
server; `imagesieve dedup` then removes the duplicates and keeps img2dataset's layout consistent."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import encode, photo_tiles

pytest.importorskip("img2dataset")

DOWNLOAD = """
import sys
from img2dataset import download
download(url_list=sys.argv[1], input_format="parquet", url_col="url", caption_col="caption",
         output_folder=sys.argv[2], output_format="webdataset", resize_mode="no", processes_count=1,
         thread_count=4, number_sample_per_shard=8, timeout=120, retries=0, enable_wandb=False,
         distributor="multiprocessing", disallowed_header_directives=[])
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served_photos(tmp_path):
    """A local HTTP server with 12 real photos, three of them served twice under other names."""
    site = tmp_path / "site"
    site.mkdir()
    tiles = photo_tiles()
    for k in range(12):
        (site / f"photo-{k}.jpg").write_bytes(encode(tiles[k]))
    for k in range(3):
        (site / f"mirror-{k}.jpg").write_bytes((site / f"photo-{k}.jpg").read_bytes())
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_dedup_of_img2dataset_output_keeps_its_layout_consistent(served_photos, tmp_path):
    names = [f"photo-{k}.jpg" for k in range(12)] + [f"mirror-{k}.jpg" for k in range(3)] + ["missing.jpg"]
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"{served_photos}/{n}" for n in names],
                             "caption": [f"a photo <b>{n}</b>" for n in names]}), urls)
    downloaded = tmp_path / "downloaded"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run([sys.executable, "-c", DOWNLOAD, str(urls), str(downloaded)], check=True, env=env,
                   capture_output=True, timeout=300)
    assert sorted(p.name for p in downloaded.glob("*.tar")) == ["00000.tar", "00001.tar"]

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "imagesieve.cli", "dedup", "--quiet", "--json", "--workers", "1",
                           str(downloaded), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["samples_in"] == 15 and summary["removed"] == 3

    removed = set(pq.read_table(out / "removed.parquet").column("id").to_pylist())
    for shard in ("00000", "00001"):
        kept = {s["__key__"]: s for s in wds.WebDataset(str(out / "shards" / f"{shard}.tar"), shardshuffle=False)}
        table = pq.read_table(out / "shards" / f"{shard}.parquet").to_pylist()
        original = pq.read_table(downloaded / f"{shard}.parquet").to_pylist()
        # the metadata table: removed keys gone, every other row (failed downloads included) as it was
        assert table == [row for row in original if row["key"] not in removed]
        assert {row["key"] for row in table if row["status"] == "success"} == set(kept)
        for key, sample in kept.items():  # captions and json travel with their image
            assert sample["txt"].decode().startswith("a photo <b>") and json.loads(sample["json"])["key"] == key
        stats = json.loads((out / "shards" / f"{shard}_stats.json").read_text())
        before = json.loads((downloaded / f"{shard}_stats.json").read_text())
        gone = sum(1 for row in original if row["key"] in removed)
        assert stats["successes"] == before["successes"] - gone == len(kept)
        assert stats["imagesieve"] == {"removed_as_duplicates": gone}
    assert any(row["status"] != "success" for shard in ("00000", "00001")
               for row in pq.read_table(out / "shards" / f"{shard}.parquet").to_pylist())  # the 404 row is kept
