"""The report: every group with its thumbnails, all data escaped, fast at 100k groups (in a real browser)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import encode, photo_tiles
from PIL import Image

from imagesieve.cli import main
from imagesieve.executors.local import LocalExecutor
from imagesieve.report import write_report
from imagesieve.report.build import GROUPS_PER_PAGE
from imagesieve.workflows.dedup import dedup
from imagesieve.workflows.find import FindConfig, find_duplicates

HOSTILE = "<script>alert(1)</script>"
HOSTILE_IMG = "<img src=x onerror=\"document['title']='pwned'\">"  # no dot: the whole name is the key


def make_shards(tmp_path) -> str:
    """Six images in three groups, with hostile keys and captions."""
    tiles = photo_tiles()
    os.makedirs(tmp_path / "in")
    with wds.TarWriter(str(tmp_path / "in" / "00000.tar"), encoder=False) as sink:
        for key, data in [("a", encode(tiles[0])), (HOSTILE, encode(tiles[0], quality=60)),
                          ("b", encode(tiles[1])), ("b-copy", encode(tiles[1])), ("c", encode(tiles[2])),
                          (HOSTILE_IMG, encode(tiles[2]))]:
            sink.write({"__key__": key, "jpg": data, "txt": f"caption of {key} {HOSTILE}".encode()})
    return str(tmp_path / "in")


def page_data(report_dir: str, filter_dir: str = "f0") -> list:
    """The groups of every page of one filter, parsed back from the data files."""
    groups = []
    for name in sorted(os.listdir(os.path.join(report_dir, "data", filter_dir))):
        text = open(os.path.join(report_dir, "data", filter_dir, name), encoding="utf-8").read()
        groups += json.loads(text[text.index("[", text.index(",", text.index(",") + 1)):text.rindex(")")])
    return groups


def test_report_lists_every_group_with_thumbnails_and_captions(tmp_path):
    run = str(tmp_path / "run")
    find_duplicates(make_shards(tmp_path), run, FindConfig(), executor=LocalExecutor(1))
    index = write_report(run, executor=LocalExecutor(1))
    report = os.path.dirname(index)
    groups = page_data(report)
    members = [m for _, g in groups for m in g]
    assert len(groups) == 3 and sorted(m[0] for m in members) == sorted(["a", HOSTILE, "b", "b-copy", "c",
                                                                         HOSTILE_IMG])
    assert all(m[7] == f"caption of {m[0]} {HOSTILE}" for m in members)
    for m in members:  # every thumbnail is a small JPEG of the image
        with Image.open(os.path.join(report, "thumbs", m[8])) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 150
    page = open(index, encoding="utf-8").read()
    assert HOSTILE not in page and "<script src=\"data/meta.js\">" in page  # data never inlined as markup
    assert all(HOSTILE not in open(os.path.join(report, "data", "f0", f)).read()
               for f in os.listdir(os.path.join(report, "data", "f0")))  # JSON escapes '<' in the data files too


def test_report_cli_from_another_folder(tmp_path, capsys, monkeypatch):
    run = str(tmp_path / "run")
    find_duplicates(make_shards(tmp_path), run, FindConfig(), executor=LocalExecutor(1))
    monkeypatch.chdir(tmp_path / "in")
    assert main(["report", "--workers", "1", "--groups", "1", os.path.relpath(run)]) == 0
    assert len(page_data(os.path.join(run, "report"))) == 1
    assert main(["report", str(tmp_path)]) == 1  # not a find run: a one-line error
    assert "has no groups/" in capsys.readouterr().err


def browser() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    return path


def render_dom(page: str, profile: str, height: int = 1000) -> str:
    """The DOM of `page` after its scripts ran, from headless Chromium."""
    return subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                           f"--window-size=1280,{height}", "--virtual-time-budget=10000", "--dump-dom",
                           f"file://{page}"], capture_output=True, text=True, timeout=120).stdout


def body_data(dom: str, name: str) -> int:
    found = re.search(rf'<body[^>]* data-{name}="(\d+)"', dom)
    return int(found.group(1)) if found else 0


def test_dedup_report_in_a_browser_shows_every_group_loads_every_thumbnail_and_runs_no_data(tmp_path):
    out = str(tmp_path / "out")
    dedup(make_shards(tmp_path), out, FindConfig(), executor=LocalExecutor(1))
    dom = render_dom(os.path.join(out, "report", "index.html"), str(tmp_path / "profile"), height=4000)
    groups = pq.read_table(os.path.join(out, "groups")).column("group_id").unique()
    assert dom.count("<section class=\"group\"") == len(groups) == 3
    assert body_data(dom, "images-loaded") == 6 and body_data(dom, "images-failed") == 0
    assert "pwned" not in dom.split("</title>")[0] and "<script>alert(1)" not in dom
    assert dom.count("caption of a &lt;script&gt;alert(1)&lt;/script&gt;") == 1  # the markup shows as text
    assert "3 samples were removed from the output shards" in dom and "removed.parquet" in dom


def synthetic_run(folder: str, n_groups: int) -> None:
    """A find run folder of `n_groups` groups of two (no shards: thumbnails show as missing)."""
    os.makedirs(os.path.join(folder, "groups"))
    os.makedirs(os.path.join(folder, "hashes"))
    kept = [f"k{g:07d}" for g in range(n_groups)]
    dup = [f"d{g:07d}" for g in range(n_groups)]
    pq.write_table(pa.table({
        "group_id": pa.array(list(range(n_groups)) * 2, pa.int64()), "kept_id": kept + kept, "id": kept + dup,
        "method": ["kept"] * n_groups + ["phash" if g % 3 else "exact" for g in range(n_groups)],
        "distance": pa.array([0] * n_groups + [g % 11 if g % 3 else 0 for g in range(n_groups)], pa.int64())}),
        os.path.join(folder, "groups", "part-00000.parquet"))
    pq.write_table(pa.table({"id": kept + dup, "shard": ["00000.tar"] * 2 * n_groups,
                             "width": [256] * 2 * n_groups, "height": [256] * 2 * n_groups,
                             "file_size": [20_000] * 2 * n_groups}),
                   os.path.join(folder, "hashes", "00000.tar.parquet"))
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump({"images": 2 * n_groups, "groups": n_groups, "duplicates": n_groups, "threshold": 10,
                   "by_method": {"phash": n_groups}, "input": [os.path.join(folder, "gone")]}, f)


def test_a_report_of_100k_groups_opens_in_under_two_seconds(tmp_path):
    browser()
    run = str(tmp_path / "run")
    synthetic_run(run, 100_000)
    started = time.monotonic()
    index = write_report(run, executor=LocalExecutor(1))
    build_seconds = time.monotonic() - started
    began = time.monotonic()
    dom = render_dom(index, str(tmp_path / "profile"))
    wall = time.monotonic() - began
    shown_ms = body_data(dom, "first-shown-ms")
    print(f"100k groups: report built in {build_seconds:.1f} s; first page shown {shown_ms} ms after navigation "
          f"(browser process {wall:.1f} s in all)")
    assert dom.count("<section class=\"group\"") == GROUPS_PER_PAGE
    assert "page 1 of 1667" in dom and "100,000 groups" in dom.replace("100000", "100,000")
    assert 0 < shown_ms < 2000
