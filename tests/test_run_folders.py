"""Run folders stay apart: a run never reads another run's outputs as input, however INPUT is named;
never starts inside or above a folder another run writes; never cleans up another run's temp files;
keeps its cache out of INPUT and OUT; and names a URL it cannot take."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_ids

from imagesieve.executors.local import LocalExecutor
from imagesieve.storage.runfolder import OutputInUseError
from imagesieve.workflows.dedup import dedup
from imagesieve.workflows.find import FindConfig, find_duplicates
from imagesieve.workflows.remove import remove_duplicates

ONE = LocalExecutor(1)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by path, but the lock file (a run writes its pid there, refused or not)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "lock"}


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
            "list of these": [str(gl / "s"), str(gl / "**" / "*.tar")]}
    for k, (way, spec) in enumerate(ways.items()):
        summary = remove_duplicates(spec, str(tmp_path / f"o{k}"), str(tmp_path / "ids"), executor=ONE)
        assert (summary.shards, summary.samples_in, summary.removed) == (2, 9, 1), way
    # a run's folder named itself is read: the way to deduplicate clean shards with new ones
    both = remove_duplicates([str(gl / "s" / "shards"), str(gl / "out")], str(tmp_path / "both"),
                             str(tmp_path / "ids"), executor=ONE)
    assert (both.shards, both.samples_in) == (4, 17)
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


def test_a_run_never_starts_inside_or_above_a_folder_that_another_run_writes(gl, tmp_path):
    """Finding 6: `dedup --dry-run s c4; remove ... s c4/shards; dedup s c4` took the remove run over: its
    result replaced, a stale c4/shards/removed.parquet, a summary counting both runs' removals."""
    source, ids, c4 = str(gl / "s" / "shards"), str(tmp_path / "ids"), tmp_path / "c4"
    exact = FindConfig(method="exact")
    dedup(source, str(c4), exact, executor=ONE, dry_run=True)
    before = tree(c4)
    with pytest.raises(ValueError, match=f"{c4 / 'shards'} lies inside {c4}, the folder of an imagesieve dedup run"):
        remove_duplicates(source, str(c4 / "shards"), ids, executor=ONE)
    assert tree(c4) == before and not (c4 / "shards").exists()  # refused before anything was written

    # a remove run already where dedup writes (as an earlier version or two runs started together left it)
    remove_duplicates(source, str(tmp_path / "r"), ids, executor=ONE)
    for where in ("shards", "shards/sub", "hashes/old"):
        os.renames(tmp_path / "r", c4 / where)
        before = tree(c4)
        with pytest.raises(ValueError, match=f"{c4 / where}, inside the output folder {c4}, holds an imagesieve "
                                             "remove run of its own, where this dedup run would write"):
            dedup(source, str(c4), exact, executor=ONE)
        assert tree(c4) == before, where
        os.renames(c4 / where, tmp_path / "r")

    os.rename(tmp_path / "r", c4 / "clean")  # where dedup does not write: its own, left alone
    clean = tree(c4 / "clean")
    assert dedup(source, str(c4), exact, executor=ONE).removed == 3
    assert dedup(source, str(c4), exact, executor=ONE).removed == 3  # its own shards folder, again
    assert tree(c4 / "clean") == clean
    assert remove_duplicates(source, str(c4 / "clean"), ids, executor=ONE).shards_skipped == 2
    os.rename(c4 / "clean", c4 / "shards" / "sub")  # inside dedup's own shards folder: refused before any work
    before = tree(c4)
    with pytest.raises(ValueError, match=f"{c4 / 'shards' / 'sub'}, inside the output folder {c4}, holds"):
        dedup(source, str(c4), exact, executor=ONE)
    assert tree(c4) == before


def hold_lock(folder: Path, command: str) -> subprocess.Popen:
    """A process holding `folder`'s run lock until killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys\n"
                               "from imagesieve.storage.runfolder import run_lock\n"
                               f"with run_lock({str(folder)!r}, {command!r}):\n    print('held', flush=True)\n"
                               "    sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_never_starts_inside_or_above_a_live_run(gl, tmp_path):
    """Finding 6, started together: a run into P and one into P/sub (or P/shards) cleaned up and wrote
    over each other. Whichever starts second is refused, naming the other's folder and process."""
    source, ids, p = str(gl / "s" / "shards"), str(tmp_path / "ids"), tmp_path / "p"
    exact = FindConfig(method="exact")
    find_duplicates(source, str(p), exact, executor=ONE)
    holder = hold_lock(p / "sub", "remove")
    try:
        for run in (lambda: find_duplicates(source, str(p), exact, executor=ONE),
                    lambda: dedup(source, str(p), exact, executor=ONE)):
            with pytest.raises(OutputInUseError, match=f"{p / 'sub'}, inside the output folder {p}, is being "
                                                       f"written by another imagesieve run .*pid {holder.pid}"):
                run()
    finally:
        holder.kill()
        holder.wait()
    holder = hold_lock(p, "find")
    try:
        with pytest.raises(OutputInUseError, match=f"lies inside {p}, which another imagesieve run is writing "
                                                   f".*pid {holder.pid}"):
            remove_duplicates(source, str(p / "sub"), ids, executor=ONE)
    finally:
        holder.kill()
        holder.wait()
    assert remove_duplicates(source, str(p / "sub"), ids, executor=ONE).removed == 1  # once neither is live
    assert find_duplicates(source, str(p), exact, executor=ONE).duplicates == 3


def test_the_cache_folder_is_refused_inside_the_input_or_the_output_and_nothing_is_made(gl, tmp_path):
    """Finding 10: `remove --cache-dir s/shards ...` wrote id-index-v4/ into the input; `remove --cache-dir
    cd2/x ... cd2` made the cache, then refused cd2 as holding files no run wrote, at every rerun."""
    source, ids = gl / "s" / "shards", str(tmp_path / "ids")
    before = tree(gl)
    for cache, out, says in ((source, tmp_path / "o1", f"the cache folder {source} lies inside the input {source}"),
                             (gl / "s", tmp_path / "o2", "lies inside the input"),  # a glob's root counts
                             (tmp_path / "cd2" / "x", tmp_path / "cd2", "lies inside the output folder")):
        spec = str(source) if cache != gl / "s" else str(gl / "s" / "**" / "*.tar")
        with pytest.raises(ValueError, match=says):
            remove_duplicates(spec, str(out), ids, executor=ONE, cache_dir=str(cache))
        assert tree(gl) == before and not out.exists() and not (tmp_path / "cd2").exists()
    with pytest.raises(ValueError, match="lies inside the output folder"):
        dedup(str(source), str(tmp_path / "d"), FindConfig(method="exact"), executor=ONE,
              cache_dir=str(tmp_path / "d" / "cache"))
    assert not (tmp_path / "d").exists()
    ids_before = tree(tmp_path / "ids")  # pass 7: nor inside the ID folder or the reference set
    with pytest.raises(ValueError, match="lies inside the ID folder"):
        remove_duplicates(str(source), str(tmp_path / "o3"), ids, executor=ONE, cache_dir=str(tmp_path / "ids" / "c"))
    reference = tmp_path / "ref"
    reference.mkdir()
    (reference / "00001.tar").write_bytes((source / "00001.tar").read_bytes())
    with pytest.raises(ValueError, match="lies inside the reference"):
        dedup(str(source), str(tmp_path / "d"), FindConfig(method="exact"), reference=str(reference),
              executor=ONE, cache_dir=str(reference / "c"))
    assert tree(tmp_path / "ids") == ids_before and os.listdir(reference) == ["00001.tar"]
    assert tree(gl) == before and not (tmp_path / "d").exists()
    assert remove_duplicates(str(source), str(tmp_path / "cd2"), ids, executor=ONE,
                             cache_dir=str(tmp_path / "cache")).removed == 1


def test_an_output_never_lies_in_what_the_run_reads_besides_input(gl, tmp_path):
    """Fourth hostile pass: `remove --duplicates IDS INPUT IDS/out` wrote removed.parquet into the ID folder
    (read as IDs by the next run); `find --method semantic --embeddings E INPUT E/out` wrote into the
    embeddings folder; a find run inside another find run's `_imagesieve/` was accepted. Each is refused
    before anything is made, naming both folders."""
    shards, ids = str(gl / "s" / "shards"), tmp_path / "ids"
    before = tree(ids)
    with pytest.raises(ValueError, match=r"ids/out lies inside the ID folder .*ids"):
        remove_duplicates(shards, str(ids / "out"), str(ids), executor=ONE)
    assert tree(ids) == before and not (ids / "out").exists()

    found = tmp_path / "found"
    find_duplicates(shards, str(found), FindConfig(method="exact"), executor=ONE)
    inside_record = found / "_imagesieve" / "x"
    with pytest.raises(ValueError, match=r"_imagesieve/x lies inside .*found, the folder of an imagesieve find run"):
        find_duplicates(shards, str(inside_record), FindConfig(method="exact"), executor=ONE)
    assert not inside_record.exists()

    from imagesieve.workflows.semantic_find import SemanticConfig, find_semantic

    embeddings = tmp_path / "emb"
    embeddings.mkdir()
    (embeddings / "e.parquet").write_bytes(b"not read: refused before")
    with pytest.raises(ValueError, match=r"emb/out lies inside the embeddings .*emb"):
        find_semantic(shards, str(embeddings / "out"), SemanticConfig(embeddings=str(embeddings)), executor=ONE)
    assert sorted(p.name for p in embeddings.iterdir()) == ["e.parquet"]


def test_a_report_never_replaces_a_users_file_named_report(gl, tmp_path):
    """`report RUN` where RUN/report is a user's file failed with a raw "Not a directory"; now refused,
    naming it, and the file is left as it was."""
    found = tmp_path / "found"
    find_duplicates(str(gl / "s" / "shards"), str(found), FindConfig(method="exact"), executor=ONE)
    (found / "report").write_text("my notes")
    proc = subprocess.run([sys.executable, "-m", "imagesieve", "report", str(found)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "report exists and is not a folder" in proc.stderr and "Traceback" not in proc.stderr
    assert (found / "report").read_text() == "my notes"


def test_file_urls_are_local_paths_and_a_one_slash_url_is_refused(gl, tmp_path, monkeypatch):
    """Sixth hostile pass: `file:///abs/out` made a folder named `file:` in the current one (and crashed), and
    `file:/abs/out` or `memory:/x` (one slash) wrote there silently. `file://` is a local path, as the README
    says, from the command line and the library; a one-slash URL is refused, saying how to write it."""
    monkeypatch.chdir(tmp_path)
    shards = gl / "s" / "shards"
    summary = find_duplicates(f"file://{shards}", f"file://{tmp_path / 'found'}", FindConfig(method="exact"),
                              executor=ONE)
    assert summary.images == 9 and (tmp_path / "found" / "summary.json").exists()
    proc = subprocess.run([sys.executable, "-m", "imagesieve", "dedup", "--quiet", f"file://{shards}",
                           f"file://{tmp_path / 'dd'}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dd" / "shards" / "00000.tar").exists()
    for one_slash in (f"file:{tmp_path / 'x'}", "memory:/x"):
        with pytest.raises(ValueError, match="reads as a local folder named '(file|memory):'"):
            find_duplicates(str(shards), one_slash, FindConfig(method="exact"), executor=ONE)
    assert not (tmp_path / "file:").exists() and not (tmp_path / "memory:").exists()


def test_an_unfinished_runs_output_is_never_read_as_input(gl, tmp_path):
    """Pass 8: `dedup A/shards B` while run A was writing (or after it was killed) read the shards written
    so far as the whole dataset, exit 0. Refused while the run is live and after it died; read once a
    rerun has finished it."""
    import stalling

    source, ids, out = str(gl / "s" / "shards"), str(tmp_path / "ids"), tmp_path / "a"
    state = tmp_path / "stall"
    proc = subprocess.Popen(stalling.command(state, "done", 1, "imagesieve", "remove", "--quiet", "--workers", "1",
                                             "--duplicates", ids, source, str(out)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        stalling.wait_for_stall(proc, state)  # one of two shards done; the run holds its lock
        with pytest.raises(ValueError, match="is being written by an imagesieve run"):
            find_duplicates(str(out), str(tmp_path / "b"), FindConfig(method="exact"), executor=ONE)
    finally:
        stalling.kill(proc)
    with pytest.raises(ValueError, match="holds the output of an imagesieve run that did not finish"):
        dedup(str(out), str(tmp_path / "c"), FindConfig(method="exact"), executor=ONE)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    remove_duplicates(source, str(out), ids, executor=ONE)  # finished by a rerun
    assert find_duplicates(str(out), str(tmp_path / "b"), FindConfig(method="exact"), executor=ONE).images == 8


def test_a_finished_clean_batch_moved_into_the_input_is_read_but_a_copy_of_the_input_is_not(make_shard, tmp_path):
    """Pass 8: dedup a batch, move its clean OUT/shards into the dataset, dedup the dataset: the clean batch
    was left out whole (a warning, exit 0). A finished run's output made from other input is data; one made
    from this input (a clean copy of it) is still left out."""
    make_shard("00000.tar", n=6, folder="batch1")
    make_shard("00000.tar", n=6, start=6, folder="dataset/batch2")
    dedup(str(tmp_path / "batch1"), str(tmp_path / "run1"), FindConfig(method="exact"), executor=ONE)
    os.rename(tmp_path / "run1" / "shards", tmp_path / "dataset" / "batch1")
    found = find_duplicates(str(tmp_path / "dataset"), str(tmp_path / "f"), FindConfig(method="exact"), executor=ONE)
    assert found.images == 12
    write_ids(tmp_path / "ids", ["00000007"])
    remove_duplicates(str(tmp_path / "dataset" / "batch2"), str(tmp_path / "copy"), str(tmp_path / "ids"),
                      executor=ONE)
    os.rename(tmp_path / "copy", tmp_path / "dataset" / "copy")  # a clean copy of batch2, made from it
    again = find_duplicates(str(tmp_path / "dataset"), str(tmp_path / "g"), FindConfig(method="exact"), executor=ONE)
    assert again.images == 12  # the copy is not read a second time
    # pass 9: nor when it was made through a list file naming the shards
    listed = tmp_path / "list.txt"
    listed.write_text(str(tmp_path / "dataset" / "batch2" / "00000.tar") + "\n")
    shutil.rmtree(tmp_path / "dataset" / "copy")
    remove_duplicates(str(listed), str(tmp_path / "copy2"), str(tmp_path / "ids"), executor=ONE)
    os.rename(tmp_path / "copy2", tmp_path / "dataset" / "copy2")
    assert find_duplicates(str(tmp_path / "dataset"), str(tmp_path / "h"), FindConfig(method="exact"),
                           executor=ONE).images == 12
    # and once the input it was made from has moved, whether it is a copy cannot be told: refused, not read
    os.rename(tmp_path / "dataset", tmp_path / "renamed")
    with pytest.raises(ValueError, match="whose input .* is no longer there"):
        find_duplicates(str(tmp_path / "renamed"), str(tmp_path / "i"), FindConfig(method="exact"), executor=ONE)


def test_a_clean_batch_made_from_object_storage_is_read_without_reaching_it(make_shard, tmp_path):
    """Pass 10: a local run asked S3 whether the input of a clean batch inside INPUT (a batch deduplicated
    from s3://) still existed, and failed on the endpoint. Input on another kind of storage overlaps
    nothing here and is not looked up."""
    import json

    make_shard("00000.tar", n=4, folder="batch")
    make_shard("00000.tar", n=4, start=4, folder="dataset/raw")
    write_ids(tmp_path / "ids", ["00000001"])
    remove_duplicates(str(tmp_path / "batch"), str(tmp_path / "dataset" / "clean"), str(tmp_path / "ids"),
                      executor=ONE)
    config = tmp_path / "dataset" / "clean" / "_imagesieve" / "config.json"
    job = json.loads(config.read_text())
    config.write_text(json.dumps({**job, "input": ["s3://no-such-bucket-here/batch"],
                                  "input_roots": ["s3://no-such-bucket-here/batch"]}))
    found = find_duplicates(str(tmp_path / "dataset"), str(tmp_path / "f"), FindConfig(method="exact"), executor=ONE)
    assert found.images == 7
