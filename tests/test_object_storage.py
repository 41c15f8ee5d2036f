"""Object storage end to end, against a real S3-compatible server (moto, in server mode on 127.0.0.1):
shards in a bucket -> `imagesieve find`, `remove`, `dedup` from s3:// to s3:// (the CLI, in a
subprocess) -> output read back through fsspec and compared byte for byte with a local run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import stalling
from conftest import CREDENTIALS, write_ids

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
wds = pytest.importorskip("webdataset")

def run_cli(*args: str, endpoint: str | None = None, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    options = ["--storage-option", f"endpoint_url={endpoint}"] if endpoint else []
    command, rest = args[0], list(args[1:])
    proc = subprocess.run([sys.executable, "-m", "imagesieve.cli", command, "--quiet", "--workers", "1",
                           *options, *rest], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **CREDENTIALS, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def dataset(make_shard, tmp_path):
    """Three shards: 6 photos, exact copies of 3 of them under other keys (with an img2dataset table), 4 more."""
    make_shard("00000.tar", n=6)
    make_shard("00001.tar", n=3, keys=["copy-0", "copy-1", "copy-2"])
    make_shard("sub/00002.tar", n=4, start=20)
    pq.write_table(pq.read_table(write_ids(tmp_path / "meta", ["copy-0", "copy-1", "copy-2"], column="key")),
                   tmp_path / "shards" / "00001.parquet")
    return tmp_path / "shards"


def upload(fs, local: Path, prefix: str) -> str:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{fs.bucket}/{prefix}/{path.relative_to(local)}")
    return f"s3://{fs.bucket}/{prefix}"


def shards_of(fs, url: str) -> dict[str, bytes]:
    """Output shards (and img2dataset tables), by path under `url`, as bytes."""
    root = url.split("://", 1)[1]
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)
            if p.endswith((".tar", ".parquet")) and "/_imagesieve/" not in p and not p.endswith("removed.parquet")}


def local_shards(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.suffix in (".tar", ".parquet") and "_imagesieve" not in p.parts and p.name != "removed.parquet"}


def samples_via_fsspec(fs, url: str) -> list[dict]:
    """Read an output shard back with webdataset's own tar expander, over an fsspec stream."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with fs.open(url.split("://", 1)[1], "rb") as stream:
        return list(group_by_keys(tar_file_expander([{"url": url, "stream": stream}])))


def test_find_remove_dedup_from_s3_to_s3_equal_a_local_run(s3, endpoint, dataset, tmp_path):
    source = upload(s3, dataset, "in")
    run_cli("dedup", str(dataset), str(tmp_path / "local"))
    run_cli("dedup", source, f"s3://{s3.bucket}/out", endpoint=endpoint)
    expected = local_shards(tmp_path / "local" / "shards")
    assert sorted(expected) == ["00000.tar", "00001.parquet", "00001.tar", "sub/00002.tar"]
    assert shards_of(s3, f"s3://{s3.bucket}/out/shards") == expected
    for rel in ("00000.tar", "00001.tar", "sub/00002.tar"):  # webdataset reads the same samples through fsspec
        remote = samples_via_fsspec(s3, f"s3://{s3.bucket}/out/shards/{rel}")
        local = wds.WebDataset(str(tmp_path / "local" / "shards" / rel), shardshuffle=False, empty_check=False)
        assert [(s["__key__"], s["jpg"], s["txt"]) for s in remote] == [(s["__key__"], s["jpg"], s["txt"])
                                                                         for s in local]
    assert s3.exists(f"{s3.bucket}/out/report/index.html")
    summary = json.loads(s3.cat_file(f"{s3.bucket}/out/summary.json"))
    assert summary["removal"]["removed"] == 3 and summary["input"] == [source]
    assert not s3.exists(f"{s3.bucket}/out/_imagesieve/lock")  # released

    # find, then remove with the ID folder on s3, the endpoint from the environment this time
    run_cli("find", source, f"s3://{s3.bucket}/found", endpoint=endpoint)
    assert s3.cat_file(f"{s3.bucket}/found/duplicates/part-00000.parquet") == \
        (tmp_path / "local" / "duplicates" / "part-00000.parquet").read_bytes()
    run_cli("remove", "--duplicates", f"s3://{s3.bucket}/found/duplicates", source, f"s3://{s3.bucket}/clean",
            env={"AWS_ENDPOINT_URL": endpoint})
    assert shards_of(s3, f"s3://{s3.bucket}/clean") == expected
    removed = pq.read_table(s3.open(f"{s3.bucket}/clean/removed.parquet")).column("id").to_pylist()
    assert sorted(removed) == ["copy-0", "copy-1", "copy-2"]


def test_a_killed_run_against_s3_resumes_to_the_same_output(s3, endpoint, make_shard, tmp_path):
    for k in range(8):
        make_shard(f"{k:05d}.tar", n=30, start=30 * k)
    source = upload(s3, tmp_path / "shards", "in")
    write_ids(tmp_path / "ids", [f"{i:08d}" for i in range(0, 240, 7)])
    ids = upload(s3, tmp_path / "ids", "ids")
    run_cli("remove", "--duplicates", str(tmp_path / "ids"), str(tmp_path / "shards"), str(tmp_path / "local"))

    out, state = f"s3://{s3.bucket}/out", tmp_path / "stall"
    command = stalling.command(state, "done", 3, "imagesieve", "remove", "--quiet", "--workers", "1",
                               "--storage-option", f"endpoint_url={endpoint}", "--duplicates", ids, source, out)
    proc = subprocess.Popen(command, env={**os.environ, **CREDENTIALS}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        stalling.wait_for_stall(proc, state)  # the hook: stopped for good after its 3rd shard was published
    finally:
        stalling.kill(proc)
    assert proc.returncode == -signal.SIGKILL
    finished = len(s3.glob(f"{s3.bucket}/out/_imagesieve/done/*.json"))
    assert finished == 3 and s3.exists(f"{s3.bucket}/out/_imagesieve/lock")  # killed mid-way, lock left
    # what a killed upload leaves (a temp key of ours) is cleaned; a user's look-alike is not
    s3.pipe_file(f"{s3.bucket}/out/.00007.tar.imagesieve-tmp-999999", b"half a shard")
    s3.pipe_file(f"{s3.bucket}/out/notes.tmp-final.txt", b"mine")
    # and so is an unfinished multipart upload to a temp key of ours (invisible, but billed); a user's stays
    for key in ("out/.00006.tar.imagesieve-tmp-999999", "out/big-upload-of-mine.tar"):
        s3.call_s3("create_multipart_upload", Bucket=s3.bucket, Key=key)

    result = run_cli("remove", "--json", "--duplicates", ids, source, out, endpoint=endpoint)
    summary = json.loads(result.stdout)
    assert summary["shards_skipped"] == finished and summary["removed"] == 35
    assert shards_of(s3, out) == local_shards(tmp_path / "local")
    assert not s3.exists(f"{s3.bucket}/out/.00007.tar.imagesieve-tmp-999999")
    assert s3.cat_file(f"{s3.bucket}/out/notes.tmp-final.txt") == b"mine"
    open_uploads = s3.call_s3("list_multipart_uploads", Bucket=s3.bucket).get("Uploads", [])
    assert [upload["Key"] for upload in open_uploads] == ["out/big-upload-of-mine.tar"]


def test_an_object_a_user_replaced_is_never_overwritten_when_its_shard_is_redone(s3, endpoint, dataset, tmp_path):
    """Pass 9: on s3:// the redo of a changed shard overwrote the user's object at OUT/00000.tar (locally it
    was refused). An object is replaced only when a record of ours names its version (size and ETag) or it
    holds the very bytes the run publishes."""
    write_ids(tmp_path / "ids", ["copy-1"])
    source, out = upload(s3, dataset, "in"), f"s3://{s3.bucket}/out"
    run_cli("remove", "--duplicates", str(tmp_path / "ids"), source, out, endpoint=endpoint)
    s3.pipe_file(f"{s3.bucket}/out/00000.tar", b"USER DATA, not a shard")
    shard = dataset / "00000.tar"
    shard.write_bytes(shard.read_bytes()[:-1024] + bytes(1024))  # a new version of the input shard
    upload(s3, dataset, "in")
    result = run_cli("remove", "--duplicates", str(tmp_path / "ids"), source, out, endpoint=endpoint, check=False)
    assert result.returncode == 1 and "00000.tar: this output file is not the one imagesieve wrote" in result.stderr
    assert s3.cat_file(f"{s3.bucket}/out/00000.tar") == b"USER DATA, not a shard"


def test_a_run_killed_after_an_upload_knows_it_as_its_own_after_the_input_changed(s3, endpoint, dataset, tmp_path):
    """Pass 10: killed after uploading OUT/00000.tar but before its done marker, then 00000.tar changed in
    the input: the rerun refused the run's own upload (locally it resumed). A digest of what is about to
    be uploaded is recorded first, as a local run records the version it is about to rename."""
    write_ids(tmp_path / "ids", ["copy-1"])
    source, out, state = upload(s3, dataset, "in"), f"s3://{s3.bucket}/out", tmp_path / "stall"
    command = stalling.command(state, "done", 0, "imagesieve", "remove", "--quiet", "--workers", "1",
                               "--storage-option", f"endpoint_url={endpoint}", "--duplicates", str(tmp_path / "ids"),
                               source, out)
    proc = subprocess.Popen(command, env={**os.environ, **CREDENTIALS}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        stalling.wait_for_stall(proc, state)  # 00000.tar uploaded, its marker not written
    finally:
        stalling.kill(proc)
    assert s3.exists(f"{s3.bucket}/out/00000.tar")
    shard = dataset / "00000.tar"
    shard.write_bytes(shard.read_bytes()[:-1024] + bytes(1024))
    upload(s3, dataset, "in")
    run_cli("remove", "--duplicates", str(tmp_path / "ids"), source, out, endpoint=endpoint)


def test_a_second_run_into_a_locked_prefix_fails_naming_the_holder(s3, endpoint, dataset):
    source = upload(s3, dataset, "in")
    holder = {"command": "remove", "host": "another-machine", "pid": 4242, "token": "x", "since": "today"}
    s3.pipe_file(f"{s3.bucket}/out/_imagesieve/lock", json.dumps(holder).encode())
    proc = run_cli("find", source, f"s3://{s3.bucket}/out", endpoint=endpoint, check=False)
    assert proc.returncode == 1
    assert "being written by another imagesieve run" in proc.stderr and "another-machine" in proc.stderr
    assert json.loads(s3.cat_file(f"{s3.bucket}/out/_imagesieve/lock")) == holder  # not ours: left alone


def test_bad_storage_paths_give_clear_errors(s3, endpoint, dataset, tmp_path):
    source = upload(s3, dataset, "in")
    cases = [
        (["find", "s3://no-such-bucket/in", str(tmp_path / "o1")], {}, "bucket 'no-such-bucket' does not exist"),
        (["find", f"s3://{s3.bucket}/wrong-prefix", str(tmp_path / "o2")], {},
         "no such object or prefix in the bucket"),
        (["remove", "--duplicates", f"s3://{s3.bucket}/no-ids", source, str(tmp_path / "o3")], {},
         "no such object or prefix"),
    ]
    for args, env, message in cases:
        proc = run_cli(*args, endpoint=endpoint, env=env, check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
    no_credentials = {k: "" for k in CREDENTIALS} | {"AWS_EC2_METADATA_DISABLED": "true",
                                                     "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                                                     "AWS_CONFIG_FILE": str(tmp_path / "none")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | no_credentials
    proc = subprocess.run([sys.executable, "-m", "imagesieve.cli", "find", "--quiet", "--storage-option",
                           f"endpoint_url={endpoint}", source, str(tmp_path / "o4")], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in env.items() if v})
    assert proc.returncode == 1 and "no credentials" in proc.stderr, proc.stderr


def test_storage_options_from_the_command_line():
    from imagesieve.cli import build_parser
    from imagesieve.cli.storage import storage_options

    args = build_parser().parse_args(["remove", "--duplicates", "d", "--storage-option", "endpoint_url=http://x:1",
                                      "--storage-option", "client_kwargs.region_name=eu", "--storage-option",
                                      "anon=false", "--storage-option", "secret=0123", "in", "out"])
    assert storage_options(args) == {"endpoint_url": "http://x:1", "client_kwargs": {"region_name": "eu"},
                                     "anon": False, "secret": "0123"}


def test_a_dedup_rerun_on_s3_after_the_input_changed_ends_as_a_fresh_run(s3, endpoint, dataset, make_shard, tmp_path):
    """Issue 20, case 7: find rewrote the lists, then remove refused ("another ids_fingerprint"), leaving lists
    and shards that disagree. Now the earlier shards written from the old lists are replaced, as locally."""
    source = upload(s3, dataset, "in")
    out = f"s3://{s3.bucket}/out"
    run_cli("dedup", source, out, endpoint=endpoint)
    make_shard("00001.tar", n=3, keys=["new-0", "new-1", "new-2"], start=40)  # no longer copies: nothing to remove
    s3.put_file(str(dataset / "00001.tar"), f"{s3.bucket}/in/00001.tar")
    run_cli("dedup", source, out, endpoint=endpoint)
    run_cli("dedup", str(dataset), str(tmp_path / "fresh"))
    assert shards_of(s3, f"{out}/shards") == local_shards(tmp_path / "fresh" / "shards")
    assert json.loads(s3.cat_file(f"{s3.bucket}/out/summary.json"))["removal"]["removed"] == 0


def test_scheme_aliases_globs_and_empty_path_segments_are_no_way_around_the_run_folder_checks(s3, endpoint, dataset,
                                                                                                tmp_path):
    """Findings 5 and 13: `remove ... s3a://bkt/data s3://bkt/data/out` was not refused (s3fs's s3a:// is
    s3://); a glob read an earlier run's output back as input; `s3://bkt//data/out` was refused as a folder
    holding files no run wrote, naming itself."""
    from imagesieve.executors.local import LocalExecutor
    from imagesieve.workflows.remove import remove_duplicates

    def remove(source, out):
        return remove_duplicates(source, out, str(tmp_path / "ids"), executor=LocalExecutor(1), storage_options={
            "endpoint_url": endpoint, "key": "testing", "secret": "testing"})

    write_ids(tmp_path / "ids", ["copy-1"])
    b = s3.bucket
    upload(s3, dataset, "data")
    before = sorted(s3.find(b))
    for source, out, says in ((f"s3a://{b}/data", f"s3://{b}/data/out", "lies inside the input"),
                              (f"s3://{b}/data/", f"s3a://{b}/data", "is the input"),
                              (f"s3a://{b}/data/sub", f"s3://{b}/data", "lies inside the output folder"),
                              (f"s3://{b}/data", f"s3://{b}//data-out", r"empty segment .*write s3://[^/]+/data-out"),
                              (f"s3://{b}//data", f"s3://{b}/data-out", r"empty segment .*write s3://[^/]+/data$")):
        with pytest.raises(ValueError, match=says):
            remove(source, out)
        assert sorted(s3.find(b)) == before, (source, out)  # nothing written
    upload(s3, dataset, "gl/s")
    assert remove(f"s3://{b}/gl/s", f"s3://{b}/gl/out").shards == 3  # a clean copy of gl/s, beside it
    assert remove(f"s3a://{b}/gl/**/*.tar", str(tmp_path / "local")).shards == 3  # gl/out's shards left out
    assert remove(f"s3://{b}/data", f"s3://{b}/more/clean").shards == 3  # a batch cleaned from other input
    upload(s3, dataset, "more/raw")
    assert remove(f"s3://{b}/more", str(tmp_path / "more")).shards == 6  # is data: read beside more/raw
