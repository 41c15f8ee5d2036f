"""The report: every group with its thumbnails, all data escaped, fast at 100k groups (in a real browser)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import numpy as np
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
from imagesieve.report.sample import PER_GROUP, thumbnail_rows
from imagesieve.report.search import fnv1a
from imagesieve.report.thumbs import CHANGED, make_thumbnail
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
    folder = os.path.join(report_dir, "data", filter_dir)
    for name in sorted(n for n in os.listdir(folder) if re.fullmatch(r"\d{5}\.js", n)):  # the pages, not a user's file
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


def synthetic_run(folder: str, n_groups: int, prefix: str = "") -> None:
    """A find run folder of `n_groups` groups of two (no shards: thumbnails show as missing); IDs are
    `prefix` + k (kept) or d (removed) + the group's number."""
    os.makedirs(os.path.join(folder, "groups"))
    os.makedirs(os.path.join(folder, "hashes"))
    kept = [f"{prefix}k{g:07d}" for g in range(n_groups)]
    dup = [f"{prefix}d{g:07d}" for g in range(n_groups)]
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


def test_a_report_of_100k_groups_shows_its_first_page_of_groups(tmp_path):
    browser()
    run = str(tmp_path / "run")
    synthetic_run(run, 100_000)
    dom = render_dom(write_report(run, executor=LocalExecutor(1)), str(tmp_path / "profile"))
    assert dom.count("<section class=\"group\"") == GROUPS_PER_PAGE
    assert "page 1 of 1667" in dom and "100,000 groups" in dom.replace("100000", "100,000")
    assert body_data(dom, "first-shown-ms") > 0  # the page says when it showed its first groups; how soon is
    # bench_report.py's to say


ONE = LocalExecutor(1)


def pairs_shard(tmp_path, n: int, tiles: dict[str, int] | None = None) -> str:
    """A folder with one shard of `n` distinct photo tiles, each stored twice byte for byte (keys NNN and
    NNN-copy): n groups of two. `tiles` puts another tile under a key (an image changed in place)."""
    folder = tmp_path / "pairs"
    os.makedirs(folder, exist_ok=True)
    with wds.TarWriter(str(folder / "00000.tar"), encoder=False) as sink:
        for i in range(n):
            for key in (f"{i:03d}", f"{i:03d}-copy"):
                data = encode(photo_tiles()[(tiles or {}).get(key, i)])
                sink.write({"__key__": key, "jpg": data, "txt": f"caption {key}".encode()})
    return str(folder)


def meta(report_dir: str) -> dict:
    text = open(os.path.join(report_dir, "data", "meta.js"), encoding="utf-8").read()
    return json.loads(text[text.index("{"):text.rindex(";")])


def id_index(report_dir: str) -> dict[str, int]:
    """ID -> group number, read back from the search index, each pair checked to be in its ID's bucket."""
    buckets, found = meta(report_dir)["ids"], {}
    for name in sorted(os.listdir(os.path.join(report_dir, "data", "ids"))):
        text = open(os.path.join(report_dir, "data", "ids", name), encoding="utf-8").read()
        pairs = json.loads(text[text.index("["):text.rindex(")")])
        assert all(int(fnv1a(pa.array([id_]))[0]) % buckets == int(name[:5]) for id_, _ in pairs)
        found.update(pairs)
    return found


def run_of_pairs(tmp_path, n: int) -> str:
    run = str(tmp_path / "run")
    find_duplicates(pairs_shard(tmp_path, n), run, FindConfig(), executor=ONE)
    return run


def test_thumbnails_are_bounded_and_every_group_is_still_listed_and_findable(tmp_path):
    run = run_of_pairs(tmp_path, 24)
    report = os.path.dirname(write_report(run, executor=ONE, max_thumbnails=10))
    groups = page_data(report)
    members = [m for _, g in groups for m in g]
    truth = pq.read_table(os.path.join(run, "groups"))
    assert [n for n, _ in groups] == list(range(1, len(truth.column("group_id").unique()) + 1)) and len(groups) == 24
    assert sorted(m[0] for m in members) == sorted(truth.column("id").to_pylist())
    assert len([m for m in members if m[8]]) == 10 == len(os.listdir(os.path.join(report, "thumbs")))
    assert all(m[8] is None and m[7] == "" for m in members if not m[8])  # listed as data only
    assert all(m[2] in ("kept", "exact") and m[3] == 0 and m[4] == 64 and m[6] > 0 for m in members)
    shown = sorted(n for n, g in groups if any(m[8] for m in g))
    assert shown[:3] == [1, 2, 3] and shown[3:] != [4, 5] and len(shown) == 5  # the first ones, then a sample
    sampled = meta(report)["filters"]["with thumbnails"]
    assert [n for n, _ in page_data(report, sampled["dir"])] == shown and sampled["groups"] == 5
    assert id_index(report) == {m[0]: n for n, g in groups for m in g}  # every ID is findable
    again = tmp_path / "again"
    write_report(run, executor=ONE, max_thumbnails=10, out_dir=str(again))
    assert page_data(str(again)) == groups  # the sample is deterministic


def test_data_files_hold_every_id_exactly_and_escaped(tmp_path):
    run = str(tmp_path / "run")
    synthetic_run(run, 1500, prefix=f"{HOSTILE} \\ \" \x01\x1f \u2028 é🙂 & ")
    report = os.path.dirname(write_report(run, executor=ONE))
    groups = page_data(report)
    assert len(groups) == 1500 and len(os.listdir(os.path.join(report, "data", "f0"))) == 3  # 600 groups a file
    table = pq.read_table(os.path.join(run, "groups"))
    assert {m[0]: n for n, g in groups for m in g} == id_index(report)
    assert sorted(id_index(report)) == sorted(table.column("id").to_pylist())
    for root, _, names in os.walk(os.path.join(report, "data")):
        assert all("<" not in open(os.path.join(root, n), encoding="utf-8").read() for n in names)
    assert groups[1] == [2, [[f"{HOSTILE} \\ \" \x01\x1f \u2028 é🙂 & k0000001", True, "kept", 0, 256, 256, 20000,
                               "", "", None, None],
                              [f"{HOSTILE} \\ \" \x01\x1f \u2028 é🙂 & d0000001", False, "phash", 1, 256, 256, 20000,
                               "", "", None, None]]]  # thumb "": tried, but the run's shards are gone


def test_a_smaller_rebuild_deletes_only_the_files_it_wrote_and_no_longer_shows(tmp_path):
    run = run_of_pairs(tmp_path, 24)
    report = tmp_path / "run" / "report"
    write_report(run, executor=ONE, max_thumbnails=10)
    assert sorted(os.listdir(report / "data")) == ["f0", "f1", "f2", "ids", "meta.js"]  # all, exact, with thumbnails
    outside = tmp_path / "outside"
    (outside / "pages").mkdir(parents=True)
    (outside / "pages" / "00000.js").write_text("theirs")
    (outside / "0123456789abcdef.jpg").write_text("theirs")
    planted = [report / "data" / "notes.txt", report / "data" / "f0" / "keep.txt", report / "thumbs" / "mine.jpg",
               report / "data" / "f0" / "00099.js.bak"]
    for path in planted:
        path.write_text("mine")
    os.symlink(outside / "pages", report / "data" / "f7")
    os.symlink(outside / "0123456789abcdef.jpg", report / "thumbs" / "0123456789abcdef.jpg")
    write_report(run, executor=ONE, max_groups=2, max_thumbnails=10)
    assert len(page_data(str(report))) == 2 and len(id_index(str(report))) == 4
    thumbs = sorted(n for n in os.listdir(report / "thumbs") if n not in ("mine.jpg", "0123456789abcdef.jpg"))
    assert thumbs == sorted(m[8] for _, g in page_data(str(report)) for m in g) and len(thumbs) == 4
    assert not (report / "data" / "f2").exists()  # every member has a thumbnail now: no sample filter
    assert all(path.read_text() == "mine" for path in planted)
    assert (report / "data" / "f7").is_symlink() and (outside / "pages" / "00000.js").read_text() == "theirs"
    assert (report / "thumbs" / "0123456789abcdef.jpg").is_symlink()
    assert (outside / "0123456789abcdef.jpg").read_text() == "theirs"


def test_a_rebuild_after_fewer_groups_drops_the_stale_pages(tmp_path):
    run = tmp_path / "run"
    synthetic_run(str(run), 2000)
    write_report(str(run), executor=ONE)
    assert len(os.listdir(run / "report" / "data" / "f0")) == 4
    write_report(str(run), executor=ONE, max_groups=100)
    assert sorted(os.listdir(run / "report" / "data" / "f0")) == ["00000.js"]
    assert len(page_data(str(run / "report"))) == 100 and len(id_index(str(run / "report"))) == 200


def test_a_rebuild_deletes_only_what_a_build_wrote_never_a_users_file_named_like_it(tmp_path):
    """Sixth hostile pass: pruning went by name, so a user's report/thumbs/<hex>.jpg or data/f0/00099.js was
    deleted by the next build. It now deletes only what earlier builds recorded, stale pages still included."""
    run = tmp_path / "run"
    synthetic_run(str(run), 2000)
    write_report(str(run), executor=ONE)
    users = [run / "report" / "data" / "f0" / "00099.js", run / "report" / "data" / "f7" / "00000.js"]
    for path in users:
        path.parent.mkdir(exist_ok=True)
        path.write_text("// mine")
    write_report(str(run), executor=ONE, max_groups=100)
    assert sorted(os.listdir(run / "report" / "data" / "f0")) == ["00000.js", "00099.js"]  # ours pruned
    assert all(path.read_text() == "// mine" for path in users)


def test_an_image_changed_under_the_same_key_shows_neither_its_old_nor_its_new_picture(tmp_path):
    """Pass 2 found the old thumbnail kept; pass 7 the new picture shown in the run's group, as an exact
    copy of an unrelated image. The run's groups are of the bytes it read: other bytes under the same ID
    get no thumbnail, a caption saying why, and a note on the page."""
    run = run_of_pairs(tmp_path, 3)
    report = os.path.dirname(write_report(run, executor=ONE))
    before = {m[0]: m[8] for _, g in page_data(report) for m in g}
    pairs_shard(tmp_path, 3, tiles={"001": 40})  # the same keys; 001 now holds another photo
    write_report(run, executor=ONE)
    after = {m[0]: (m[7], m[8]) for _, g in page_data(report) for m in g}
    assert after["001"] == (CHANGED, "")
    assert {k: after[k][1] for k in after if k != "001"} == {k: before[k] for k in before if k != "001"}
    assert not os.path.exists(os.path.join(report, "thumbs", before["001"]))  # the stale one is gone
    assert make_thumbnail(encode(photo_tiles()[40]), "tile 40", 150) not in \
        [open(os.path.join(report, "thumbs", name), "rb").read() for name in os.listdir(os.path.join(report, "thumbs"))]
    with open(os.path.join(report, "index.html"), encoding="utf-8") as f:
        assert "Changed in the input since the run (other bytes under the same ID): 1 of" in f.read()


def test_the_search_box_finds_any_id_in_a_browser(tmp_path):
    browser()
    run = str(tmp_path / "run")
    prefix = "é🙂 "
    synthetic_run(run, 3000, prefix=prefix)
    index = write_report(run, executor=ONE)
    dom = render_dom(index + "#id=" + quote(f"{prefix}d0002345"), str(tmp_path / "profile"))
    assert body_data(dom, "found-group") == 2346  # on page 40 of the pager
    assert '<section class="group found" id="group-2346">' in dom and "page 40 of 50" in dom
    dom = render_dom(index + "#id=" + quote("nothing-like-it"), str(tmp_path / "profile"))
    assert "no group holds" in dom and body_data(dom, "found-group") == 0
    out = str(tmp_path / "out")
    dedup(make_shards(tmp_path), out, FindConfig(), executor=ONE)
    dom = render_dom(os.path.join(out, "report", "index.html") + "#id=" + quote(HOSTILE_IMG),
                     str(tmp_path / "profile"))
    assert body_data(dom, "found-group") > 0 and "pwned" not in dom.split("</title>")[0]


def test_a_symlinked_report_folder_is_refused_before_anything_is_made_in_it(tmp_path):
    """Hostile pass: `report` with OUT/report -> elsewhere made an empty thumbs/ there before refusing."""
    run = run_of_pairs(tmp_path, 4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "run" / "report")
    with pytest.raises(ValueError, match="is a symlink"):
        write_report(run, executor=ONE)
    assert os.listdir(elsewhere) == []
    os.remove(tmp_path / "run" / "report")  # (fifth pass: a link one level down gave a raw "File exists")
    write_report(run, executor=ONE)
    shutil.rmtree(tmp_path / "run" / "report" / "thumbs")
    os.symlink(elsewhere, tmp_path / "run" / "report" / "thumbs")
    with pytest.raises(ValueError, match="thumbs is a symlink or a file"):
        write_report(run, executor=ONE)
    assert os.listdir(elsewhere) == []


def test_a_report_folder_holding_a_users_files_is_refused_and_an_earlier_report_is_rebuilt(tmp_path):
    """Hostile pass: a user's report/index.html was silently replaced."""
    run = run_of_pairs(tmp_path, 4)
    mine = Path(run, "report", "index.html")
    mine.parent.mkdir()
    mine.write_text("<h1>mine</h1>")
    with pytest.raises(ValueError, match=r"already holds files that no imagesieve report wrote \(.*index\.html\)"):
        write_report(run, executor=ONE)
    assert mine.read_text() == "<h1>mine</h1>" and os.listdir(mine.parent) == ["index.html"]
    mine.unlink()
    write_report(run, executor=ONE)
    first = mine.read_text()
    assert "<h1>mine</h1>" not in first and write_report(run, executor=ONE) == str(mine)  # a rebuild is ours


def test_a_report_killed_before_its_last_file_is_rebuilt_by_the_rerun(tmp_path):
    """Fifth hostile pass: a dedup killed while writing thumbnails (before data/meta.js, which marked a folder
    as a report's) could never be rerun: its own thumbnails were taken for a user's files. The report now
    marks its folder before it writes anything else; this is the folder such a kill leaves."""
    run = run_of_pairs(tmp_path, 4)
    index = Path(write_report(run, executor=ONE))
    for written_last in (index, index.parent / "data" / "meta.js"):
        written_last.unlink()
    assert list((index.parent / "thumbs").iterdir())  # the thumbnails of the killed run are there
    assert write_report(run, executor=ONE) == str(index) and index.exists()


def test_a_run_without_summary_says_so(tmp_path):
    run = run_of_pairs(tmp_path, 4)
    os.remove(os.path.join(run, "summary.json"))
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        write_report(run, executor=ONE)
    assert not os.path.exists(os.path.join(run, "report"))  # (sixth pass: its mark was made before the refusal)


def test_one_huge_group_does_not_take_every_thumbnail():
    """Dense data makes a group of 100,000 near-copies: it shows its first PER_GROUP members, and the
    rest of the bound still goes to the other groups (first pages, then a sample)."""
    sizes = np.array([100_000] + [2] * 500)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rows = thumbnail_rows(starts, first_page=np.arange(len(sizes)) // GROUPS_PER_PAGE, limit=300)
    group = np.searchsorted(starts, rows, side="right") - 1
    assert len(rows) == 300 and np.array_equal(rows, np.unique(rows))
    assert np.array_equal(rows[group == 0], np.arange(PER_GROUP))  # the kept image and the next ones
    assert len(np.unique(group)) == 1 + (300 - PER_GROUP) // 2  # every other chosen group shown whole


def test_a_copied_run_folders_report_names_its_own_removed_list(tmp_path):
    """Pass 8: the report of a dedup folder copied elsewhere named the original folder's removed list."""
    import shutil

    out = tmp_path / "first"
    dedup(make_shards(tmp_path), str(out), FindConfig(), executor=ONE)
    shutil.copytree(out, tmp_path / "copy", symlinks=True)
    shutil.rmtree(out)
    index = write_report(str(tmp_path / "copy"), executor=ONE)
    with open(index, encoding="utf-8") as f:
        text = f.read()
    assert "removed.parquet in the run&#x27;s folder" in text or "removed.parquet in the run's folder" in text
    assert str(out) not in text
