"""Run folders stay apart: a run never reads another run's outputs as input, however INPUT is named;
never starts inside or above a folder another run writes; never cleans up another run's temp files;
keeps its cache out of INPUT and OUT; and names a URL it cannot take."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_ids

from imagesieve.executors.local import LocalExecutor
from imagesieve.workflows.find import FindConfig, find_duplicates
from imagesieve.workflows.remove import remove_duplicates

ONE = LocalExecutor(1)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def gl(make_shard, tmp_path):
    """gl/s/shards: two shards (the second copies 3 photos of the first); gl/out: an earlier remove run of
    them, gl/found: an earlier find run (each holding .tar files and an _imagesieve/ record)."""
    make_shard("00000.tar", n=6, folder="gl/s/shards")
    make_shard("00001.tar", n=3, keys=["copy-0", "copy-1", "copy-2"], folder="gl/s/shards")
    write_ids(tmp_path / "ids", ["copy-1"])
    gl = tmp_path / "gl"
    remove_duplicates(str(gl / "s" / "shards"), str(gl / "out"), str(tmp_path / "ids"), executor=ONE)
    return gl


def list_file(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_earlier_outputs_are_left_out_of_the_input_however_it_is_named(gl, tmp_path):
    """Finding 5: `remove ... 'gl/**/*.tar' gl5` read gl/out's clean shards back as input, the dataset twice;
    only a folder given as INPUT left out folders holding an _imagesieve/ record."""
    every_tar = sorted(str(p) for p in gl.rglob("*.tar"))
    assert len(every_tar) == 4
    ways = {"folder": str(gl),
            "glob": str(gl / "**" / "*.tar"),
            "brace": str(gl / "{s,out}" / "**" / "*.tar"),
            "list file of shards": list_file(tmp_path / "shards.txt", every_tar),
            "list file of a glob": list_file(tmp_path / "glob.txt", [str(gl / "**" / "*.tar")]),
            "list of these": [str(gl / "s" / "**" / "*.tar"), str(gl / "out" / "*.tar")]}
    for k, (way, spec) in enumerate(ways.items()):
        summary = remove_duplicates(spec, str(tmp_path / f"o{k}"), str(tmp_path / "ids"), executor=ONE)
        assert (summary.shards, summary.samples_in, summary.removed) == (2, 9, 1), way
    found = find_duplicates(str(gl / "**" / "*.tar"), str(tmp_path / "f"), FindConfig(method="exact"), executor=ONE)
    assert (found.images, found.duplicates) == (9, 3)  # before: 17 images, keys repeated across shards refused


def test_a_run_never_cleans_up_the_temp_files_of_a_run_nested_in_its_folder(gl, tmp_path):
    """Finding 8: a run into P deleted the live temp files of a run into P/sub (which then failed with
    FileNotFoundError): the cleanup walked into the other run's folder. Locked or not, they are that run's."""
    out = tmp_path / "out"
    find_duplicates(str(gl / "s" / "shards"), str(out), FindConfig(method="exact"), executor=ONE)
    remove_duplicates(str(gl / "s" / "shards"), str(out / "clean"), str(tmp_path / "ids"), executor=ONE)
    theirs = [out / "clean" / f".00000.tar.imagesieve-tmp-{os.getpid()}",
              out / "clean" / "_imagesieve" / "done" / f".00000.tar.json.imagesieve-tmp-{os.getpid()}"]
    mine = [out / f".summary.json.imagesieve-tmp-{os.getpid()}",
            out / "_imagesieve" / f".config.json.imagesieve-tmp-{os.getpid()}"]
    for path in theirs + mine:
        path.write_bytes(b"being written")
    find_duplicates(str(gl / "s" / "shards"), str(out), FindConfig(method="exact"), executor=ONE)
    assert [p.exists() for p in theirs + mine] == [True, True, False, False]

    import fsspec

    from imagesieve.storage.runfolder import remove_stale_temp_files

    fs = fsspec.filesystem("memory")
    for key in ("p/_imagesieve/run.json", "p/.a.imagesieve-tmp-1", "p/_imagesieve/.b.imagesieve-tmp-1",
                "p/sub/_imagesieve/run.json", "p/sub/.c.imagesieve-tmp-1", "p/sub/_imagesieve/.d.imagesieve-tmp-1"):
        fs.pipe_file(f"/nested-runs/{key}", b"x")
    removed = remove_stale_temp_files("memory://nested-runs/p")
    assert sorted(url.rsplit("/", 1)[1] for url in removed) == [".a.imagesieve-tmp-1", ".b.imagesieve-tmp-1"]
    assert fs.exists("/nested-runs/p/sub/.c.imagesieve-tmp-1")
