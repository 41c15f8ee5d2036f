"""The promises of the README's Guarantees section, each with a test that fails if it breaks."""

from __future__ import annotations

import ast
import os
import pickle
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import stalling
from conftest import encode, photo_tiles, write_ids
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.id_index import IdIndex
from imagesieve.pipeline import Pipeline
from imagesieve.stages.base import ProcessingStage
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.stages.io import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from imagesieve.stages.io.writer import AccountingError
from imagesieve.storage.runfolder import read_json, work_path, write_json_atomic
from imagesieve.tar.read import iter_samples
from imagesieve.tar.write import AtomicShardWriter
from imagesieve.tasks import ImageBatch, Removal
from imagesieve.workflows.remove import remove_duplicates
from imagesieve.workflows.sample_data import write_shard

SRC = Path(__file__).resolve().parents[1] / "src" / "imagesieve"


def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imagesieve.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.tar"))}


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """150 shards of 40 samples: room to stop a run at several points in the middle."""
    from conftest import encode, photo_tiles

    root = tmp_path_factory.mktemp("many")
    tiles = photo_tiles()
    images = [encode(t) for t in tiles]
    for s in range(150):
        keys = [f"{s:03d}-{i:03d}" for i in range(40)]
        write_shard(str(root / "shards" / f"{s:05d}.tar"),
                    [{"jpg": images[(s * 40 + i) % len(images)], "txt": f"c{i}".encode()} for i in range(40)], keys)
    write_ids(root / "dups", [f"{s:03d}-{i:03d}" for s in range(150) for i in range(0, 40, 7)])
    return root


def stalled_run(state: Path, point: str, n: int, *args: str) -> subprocess.Popen:
    """`imagesieve ARGS`, stopped for good by the stall hook before the call at `point` after the `n`th,
    then SIGKILLed with every process it started: a kill at a known point."""
    proc = subprocess.Popen(stalling.command(state, point, n, "imagesieve", *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        stalling.wait_for_stall(proc, state)
    finally:
        stalling.kill(proc)
    assert proc.returncode == -signal.SIGKILL
    return proc


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "imagesieve-tmp" in p.name]


def test_two_kills_in_a_row_around_one_shards_rename_never_lock_the_run_out_of_its_own_output(make_shard,
                                                                                              tmp_path):
    """Pass 9: run 1 killed right after renaming 00000.tar into place (its marker unwritten), run 2 killed
    after recording the version it was about to publish but before its rename: run 2's record replaced run
    1's, and every later rerun refused the run's own shard. The record keeps every version it named."""
    for k in range(2):
        make_shard(f"{k:05d}.tar", n=4, start=4 * k)
    write_ids(tmp_path / "dups", ["00000001"])
    shards, dups, out = str(tmp_path / "shards"), str(tmp_path / "dups"), tmp_path / "out"
    args = ("remove", "--quiet", "--workers", "1", "--duplicates", dups, shards, str(out))
    stalled_run(tmp_path / "stall-1", "done", 0, *args)  # 00000.tar renamed into place, no marker
    stalled_run(tmp_path / "stall-2", "publish", 0, *args)  # its redo recorded, not renamed
    final = run_cli("remove", "--quiet", "--duplicates", dups, shards, str(out))
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    reference = tmp_path / "reference"
    remove_duplicates(shards, str(reference), dups, executor=LocalExecutor(1))
    assert files_of(out) == files_of(reference)


def test_remove_killed_at_random_points_then_rerun_gives_identical_output(many_shards, tmp_path):
    shards, dups = str(many_shards / "shards"), str(many_shards / "dups")
    reference = tmp_path / "reference"
    remove_duplicates(shards, str(reference), dups, executor=LocalExecutor(1))
    out = tmp_path / "killed"
    done_dir = out / "_imagesieve" / "done"
    first, *later = sorted(random.Random(7).sample(range(1, 140), 3))  # shards done at each kill

    # one worker, stopped with shard `first` complete under its temp name, not yet renamed to its own
    stalled_run(tmp_path / "stall-0", "rename", first, "remove", "--quiet", "--workers", "1", "--duplicates",
                dups, shards, str(out))
    assert len(list(done_dir.glob("*.json"))) == len(list(out.glob("*.tar"))) == first
    assert [p.name.split(".tar.")[0] for p in temp_files(out)] == [f".{first:05d}"]
    # two workers, resumed, each kill once `target` shards in all are done: the other worker anywhere
    for k, target in enumerate(later, 1):
        before = len(list(done_dir.glob("*.json")))
        stalled_run(tmp_path / f"stall-{k}", "done", target - before, "remove", "--quiet", "--workers", "2",
                    "--duplicates", dups, shards, str(out))
        assert len(list(done_dir.glob("*.json"))) == target
    for path in out.rglob("*.tar"):  # never a partial file under a final name
        with tarfile.open(path) as tar:
            tar.getmembers()
    final = run_cli("remove", "--quiet", "--duplicates", dups, shards, str(out))
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    assert files_of(out) == files_of(reference)
    assert pq.read_table(out / "removed.parquet").sort_by("id").equals(
        pq.read_table(reference / "removed.parquet").sort_by("id"))
    assert temp_files(out) == []


def test_find_killed_then_rerun_gives_the_same_rows(many_shards, tmp_path):
    shards = str(many_shards / "shards")
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert run_cli("find", "--quiet", "--workers", "1", shards, str(reference)).wait(timeout=300) == 0
    stalled_run(tmp_path / "stall", "hashes", 40, "find", "--quiet", "--workers", "2", shards, str(out))
    assert len(list(out.glob("hashes/*.parquet"))) == 40 and not (out / "duplicates").exists()
    assert run_cli("find", "--quiet", shards, str(out)).wait(timeout=300) == 0
    for part in ("duplicates", "groups"):
        assert pq.read_table(out / part).equals(pq.read_table(reference / part))


class SilentDropStage(ProcessingStage[ImageBatch, ImageBatch]):
    """A buggy stage: drops a sample without saying so."""

    name = "silent_drop"

    def process(self, task: ImageBatch) -> ImageBatch:
        return task.with_data(task.data[1:])


def test_accounting_records_a_silently_dropped_sample_with_the_stage_name(make_shard, tmp_path):
    make_shard(n=4)
    write_ids(tmp_path / "dups", ["00000002"])
    pipeline = Pipeline("buggy", stages=[FilePartitioningStage(file_paths=str(tmp_path / "shards")),
                                         ImageReaderStage(), SilentDropStage(),
                                         ImageDuplicatesRemovalStage(str(tmp_path / "dups")),
                                         ImageWriterStage(output_dir=str(tmp_path / "out"))])
    [result] = pipeline.run(LocalExecutor(1))
    assert (result._metadata["samples_in"], result._metadata["kept"], result._metadata["removed"]) == (4, 2, 2)
    removed = pq.read_table(work_path(str(tmp_path / "out"), "removed", "00000.tar", ".parquet")).to_pylist()
    assert sorted((r["id"], r["reason"]) for r in removed) == [("00000000", "dropped by silent_drop"),
                                                                ("00000002", "listed as duplicate")]


def test_accounting_catches_a_sample_lost_outside_the_executor(make_shard, tmp_path):
    """Stages called by hand, without an executor to record the drop: the writer refuses."""
    batch = ImageReaderStage().read_shard(make_shard(n=4), "00000.tar")
    with pytest.raises(AccountingError, match="4 samples in but 3 kept \\+ 0 removed"):
        ImageWriterStage(output_dir=str(tmp_path / "out")).process(SilentDropStage().process(batch))
    assert not (tmp_path / "out" / "00000.tar").exists()


class KeepAndDropStage(ProcessingStage[ImageBatch, ImageBatch]):
    """A buggy stage: records a removal of a sample it also keeps."""

    name = "keep_and_drop"

    def process(self, task: ImageBatch) -> ImageBatch:
        task.removed.append(Removal(task.data[0].image_id, task.data[0].shard, "both"))
        return task


def test_accounting_catches_a_sample_counted_twice(make_shard, tmp_path):
    make_shard(n=4)
    pipeline = Pipeline("buggy", stages=[FilePartitioningStage(file_paths=str(tmp_path / "shards")),
                                         ImageReaderStage(), KeepAndDropStage(),
                                         ImageWriterStage(output_dir=str(tmp_path / "out"))])
    with pytest.raises(AccountingError, match="stage 'keep_and_drop'.*4 samples in but 4 kept \\+ 1 removed"):
        pipeline.run(LocalExecutor(1))


def test_accounting_catches_tampered_shard_counts(make_shard, tmp_path):
    make_shard(n=4)
    write_ids(tmp_path / "dups", ["00000001"])
    out = tmp_path / "out"
    remove_duplicates(str(tmp_path / "shards"), str(out), str(tmp_path / "dups"), executor=LocalExecutor(1))
    marker = out / "_imagesieve" / "done" / "00000.tar.json"
    stats = read_json(str(marker))
    write_json_atomic({**stats, "kept": stats["kept"] + 1}, str(marker))
    with pytest.raises(AccountingError, match="whole run"):
        remove_duplicates(str(tmp_path / "shards"), str(out), str(tmp_path / "dups"), executor=LocalExecutor(1))


def test_output_path_that_is_a_file_is_a_clear_error(make_shard, tmp_path):
    make_shard(n=2)
    write_ids(tmp_path / "dups", ["00000001"])  # names a sample: a list naming none is refused first
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OSError, match="out"):
        remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "dups"))


def test_key_repeated_across_shards_is_removed_everywhere_when_listed(make_shard, tmp_path):
    make_shard("00000.tar", keys=["same", "a"], n=2)
    make_shard("00001.tar", keys=["same", "b"], n=2)
    write_ids(tmp_path / "dups", ["same"])
    summary = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "dups"),
                                executor=LocalExecutor(1))
    assert (summary.removed, summary.kept, summary.ids_not_found) == (2, 2, 0)


class Payload:
    """Unpickled, it creates the file at `path` (as any pickle can run code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_input_data_is_never_unpickled_or_run(tmp_path):
    """Members a decoder would unpickle (webdataset's .pyd, .pickle; an object .npy) and text that would run
    if evaluated, in the shards and their img2dataset tables, go through find, remove and the report as
    bytes: none runs (each would leave its file), and every kept one is copied byte for byte."""
    import io

    import numpy as np
    import pyarrow as pa
    import webdataset as wds
    from conftest import encode, photo_tiles

    from imagesieve.workflows.dedup import dedup

    ran = tmp_path / "ran"
    ran.mkdir()

    def pickled(what: str) -> bytes:
        return pickle.dumps(Payload(str(ran / what)))

    def evaluated(what: str) -> bytes:
        return f"__import__('pathlib').Path({str(ran / what)!r}).touch()".encode()

    npy = io.BytesIO()
    np.save(npy, np.array([Payload(str(ran / "npy")), 1], dtype=object), allow_pickle=True)
    tiles = photo_tiles()
    samples = [{"jpg": encode(tiles[i % 3]), "pyd": pickled(f"pyd{i}"), "pickle": pickled(f"pickle{i}"),
                "npy": npy.getvalue(), "txt": evaluated(f"txt{i}"), "cls": evaluated(f"cls{i}")} for i in range(6)]
    keys = [f"k{i}" for i in range(6)]
    write_shard(str(tmp_path / "in" / "00000.tar"), samples, keys)
    pq.write_table(pa.table({"key": keys, "caption": [evaluated(f"table{i}").decode() for i in range(6)],
                             "status": ["success"] * 6}), tmp_path / "in" / "00000.parquet")
    summary = dedup(str(tmp_path / "in"), str(tmp_path / "out"), executor=LocalExecutor(1))
    assert summary.removed == 3  # tiles 0-2 twice: the run went through
    assert sorted(p.name for p in ran.iterdir()) == []
    kept = {s["__key__"]: s for s in wds.WebDataset(str(tmp_path / "out" / "shards" / "00000.tar"),
                                                     shardshuffle=False)}
    assert len(kept) == 3 and all(kept[k][ext] == samples[keys.index(k)][ext] for k in kept for ext in samples[0])


def test_no_eval_exec_or_pickle_call_in_the_source():
    """A guard beside the behaviour test above (which covers what its inputs reach): no call that runs or
    unpickles what it reads (`eval`, `exec`, `pickle.load(s)`, `np.load(..., allow_pickle=True)`) and no
    `extractall` (which writes where a tar's names say), in any module."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else \
                node.func.attr if isinstance(node.func, ast.Attribute) else ""
            unpickles = any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and not k.value.value)
                            for k in node.keywords)
            if name in ("eval", "exec", "extractall") or unpickles or \
                    (name in ("load", "loads") and isinstance(node.func, ast.Attribute) and
                     isinstance(node.func.value, ast.Name) and
                     node.func.value.id in ("pickle", "cloudpickle", "dill")):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {name}")
    # the one exception: a spawned GPU worker unpickles the stages its own driver pickled for it (what
    # multiprocessing does for every worker); never bytes read from the input
    assert [f.rsplit(":", 1)[0] for f in found] == ["executors/processes.py"] and found[0].endswith(" loads")


def test_writer_never_leaves_a_partial_file_under_the_final_name(tmp_path):
    final = tmp_path / "00000.tar"
    with pytest.raises(RuntimeError), AtomicShardWriter(str(final)) as writer:
        writer._write(b"x" * 1000)
        raise RuntimeError("crash mid-write")
    assert not final.exists() and not list(tmp_path.iterdir())


member_names = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/\\.\x00"), min_size=1,
                       max_size=40)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=st.dictionaries(member_names, st.dictionaries(st.sampled_from(["jpg", "txt", "json", "cls", "seg.png"]),
                                                             st.binary(max_size=3000), min_size=1), max_size=8),
       removed=st.sets(st.integers(0, 7)))
def test_property_shard_round_trip(tmp_path, samples, removed):
    """Random keys, member sets and bytes: written, read, filtered and rewritten, every kept byte equal."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    src = folder / "in.tar"
    keys = list(samples)
    write_shard(str(src), [samples[k] for k in keys], keys)
    read = list(iter_samples(str(src)))
    assert [s.key for s in read] == keys
    assert [{e: r.read() for e, r in s.members.items()} for s in read] == [samples[k] for k in keys]
    kept = [s for i, s in enumerate(read) if i not in removed]
    with AtomicShardWriter(str(folder / "out.tar")) as writer:
        for sample in kept:
            for ref in sample.members.values():
                writer.add(ref)
    with tarfile.open(folder / "out.tar") as tar:
        got = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert got == [(f"{s.key}.{e}", samples[s.key][e]) for s in kept for e in samples[s.key]]


@settings(max_examples=60, deadline=None)
@given(listed=st.sets(st.text(max_size=30), max_size=50), others=st.sets(st.text(max_size=30), max_size=50))
def test_property_id_index_has_no_false_removals_and_no_misses(listed, others):
    index = IdIndex.from_ids(sorted(listed))
    queries = sorted(listed | others)
    assert index.contains(queries).tolist() == [q in listed for q in queries]
    assert len(index) == len(listed)




def test_what_a_killed_run_published_for_an_input_gone_since_leaves_the_output(make_shard, tmp_path):
    """Pass 12: a shard (and an image) published by a run killed before its done marker stayed in the output,
    uncounted, once it had left the input: only done markers were read. The publishing record names it."""
    for k in range(3):
        make_shard(f"{k:05d}.tar", n=4, start=4 * k)
    write_ids(tmp_path / "dups", ["00000001"])
    shards, dups, out = tmp_path / "shards", str(tmp_path / "dups"), tmp_path / "out"
    stalled_run(tmp_path / "stall-1", "done", 1, "remove", "--quiet", "--workers", "1", "--duplicates", dups,
                str(shards), str(out))  # 00000.tar done, 00001.tar renamed into place with no marker
    assert (out / "00001.tar").exists()
    os.rename(shards / "00001.tar", tmp_path / "00001.tar")  # it leaves the input
    final = run_cli("remove", "--quiet", "--duplicates", dups, str(shards), str(out))
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00002.tar"]

    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(6):
        (photos / f"{k}.png").write_bytes(encode(photo_tiles()[k], "png"))
    stalled_run(tmp_path / "stall-2", "place", 3, "remove", "--quiet", "--workers", "1", "--allow-unmatched-ids",
                "--duplicates", dups, str(photos), str(tmp_path / "pout"))  # 3 images placed, the chunk not done
    placed = sorted(p.name for p in (tmp_path / "pout").glob("*.png"))
    os.remove(photos / placed[0])  # an image the killed run placed leaves the input
    final = run_cli("remove", "--quiet", "--allow-unmatched-ids", "--duplicates", dups, str(photos),
                    str(tmp_path / "pout"))
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    assert sorted(p.name for p in (tmp_path / "pout").glob("*.png")) == sorted(p.name for p in photos.glob("*.png"))
