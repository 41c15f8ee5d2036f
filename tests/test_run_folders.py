"""Run folders stay apart: a run never reads another run's outputs as input, however INPUT is named;
never starts inside or above a folder another run writes; never cleans up another run's temp files;
keeps its cache out of INPUT and OUT; and names a URL it cannot take."""

from __future__ import annotations

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
