"""The HTML report: every group with its thumbnails, and all data escaped."""

from __future__ import annotations

import os
from html.parser import HTMLParser

import pytest
import webdataset as wds
from conftest import encode, photo_tiles

from imagesieve.cli import main
from imagesieve.executors.local import LocalExecutor
from imagesieve.report import write_report
from imagesieve.workflows.find import FindConfig, find_duplicates

HOSTILE = "<script>alert(1)</script>"
HOSTILE_IMG = "<img src=x onerror=\"document['title']='pwned'\">"  # no dot: the whole name is the key


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images, self.scripts, self.text = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self.scripts += tag == "script"

    def handle_data(self, data):
        self.text.append(data)


def make_run(tmp_path) -> str:
    tiles = photo_tiles()
    os.makedirs(tmp_path / "in")
    with wds.TarWriter(str(tmp_path / "in" / "00000.tar"), encoder=False) as sink:
        for key, data in [("a", encode(tiles[0])), (HOSTILE, encode(tiles[0], quality=60)),
                          ("b", encode(tiles[1])), ("b-copy", encode(tiles[1])), ("c", encode(tiles[2])),
                          (HOSTILE_IMG, encode(tiles[2]))]:
            sink.write({"__key__": key, "jpg": data})
    find_duplicates(str(tmp_path / "in"), str(tmp_path / "run"), FindConfig(), executor=LocalExecutor(1))
    return str(tmp_path / "run")


def test_report_shows_every_group_with_thumbnails_and_escapes_keys(tmp_path):
    run = make_run(tmp_path)
    path = write_report(run)
    page = open(path, encoding="utf-8").read()
    parsed = Collector()
    parsed.feed(page)
    assert parsed.scripts == 0 and HOSTILE not in page  # the key is shown as text, never as markup
    assert HOSTILE in "".join(parsed.text)
    assert page.count("<section class='group'") == 3 and HOSTILE_IMG not in page
    assert sorted(i["alt"] for i in parsed.images) == sorted(["a", HOSTILE, "b", "b-copy", "c", HOSTILE_IMG])
    assert all(i["src"].startswith("data:image/jpeg;base64,") for i in parsed.images)


def test_report_cli_from_another_folder(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path)
    monkeypatch.chdir(tmp_path / "in")
    assert main(["report", "--groups", "1", os.path.relpath(run)]) == 0
    page = open(os.path.join(run, "report.html"), encoding="utf-8").read()
    assert page.count("<section class='group'") == 1 and "Showing 1 of 3 groups" in page
    assert main(["report", str(tmp_path)]) == 1  # not a find run: a one-line error
    assert "has no groups/" in capsys.readouterr().err


def test_report_renders_in_a_real_browser_without_running_data_as_code(tmp_path):
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    path = write_report(make_run(tmp_path))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", f"file://{path}"], capture_output=True, text=True, timeout=120).stdout
    assert "<title>imagesieve: duplicates in" in dom and "pwned" not in dom.split("</title>")[0]
    assert dom.count("<img ") == 6 and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
