"""The storage interface (issue 23): what callers ask of a path, answered alike for a local path and a URL
(fsspec's in-memory file system stands in for object storage here)."""

from __future__ import annotations

import os

import fsspec
import pytest

from imagesieve.storage import (
    canonical,
    common_folder,
    file_identity,
    listed_path,
    local_file,
    local_folder,
    makedirs,
    missing_locally,
    parent,
    relative_path,
    same_file_system,
    separator,
    storage_for,
    supports_hard_links,
)
from imagesieve.storage.shard_copy import ShardCopy, shard_copy_of


@pytest.fixture
def memory():
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/iface/a.tar", b"a")
    fs.pipe_file("/iface/b.tar", b"b")
    fs.pipe_file("/iface/sub/c.tar", b"c")
    yield fs
    fs.rm("/iface", recursive=True)


@pytest.fixture
def local(tmp_path):
    for rel, data in (("a.tar", b"a"), ("b.tar", b"b"), ("sub/c.tar", b"c")):
        (tmp_path / "iface" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "iface" / rel).write_bytes(data)
    return str(tmp_path / "iface")


def test_listing_a_folder_a_glob_and_what_lies_right_in_a_folder_alike(memory, local):
    for root in (local, "memory://iface"):
        store = storage_for(root)
        sep = separator(root)
        assert [relative_path(p, root) for p in store.list_files(root)] == ["a.tar", "b.tar", f"sub{os.sep}c.tar"]
        assert [relative_path(p, root) for p in store.glob(f"{root}{sep}**{sep}*.tar")] == \
            ["a.tar", "b.tar", f"sub{os.sep}c.tar"]
        assert sorted(relative_path(p, root) for p in store.list_folder(root)) == \
            ["a.tar", "b.tar"] + (["sub"] if root == local else [])  # (a local folder lists its subfolders too)
        assert parent(store.list_folder(root)[0]) == root
        assert common_folder([f"{root}{sep}a.tar", f"{root}{sep}sub{sep}c.tar"]) == root


def test_local_paths_and_urls_are_never_mixed_in_one_input(local):
    with pytest.raises(ValueError, match="mixes local shards and object storage"):
        common_folder([os.path.join(local, "a.tar"), "memory://iface/a.tar"])


def test_a_local_tree_to_read_is_the_folder_itself_or_a_copy_whose_errors_name_the_url(memory, local):
    with storage_for(local).local_tree(local, lambda rel: True) as folder:
        assert folder == local
    store = storage_for("memory://iface")
    with pytest.raises(ValueError, match="memory://iface/sub/c.tar: bad"), \
            store.local_tree("memory://iface", lambda rel: rel.endswith("c.tar")) as folder:
        assert sorted(os.listdir(folder)) == ["sub"]  # only what `include` accepted
        raise ValueError(f"{os.path.join(folder, 'sub', 'c.tar')}: bad")
    assert not os.path.exists(folder)  # the copy is gone


def test_a_tree_to_write_is_published_whole_and_only_without_error(memory, tmp_path):
    out = "memory://iface/report"
    with pytest.raises(RuntimeError), storage_for(out).writable_tree(out) as folder:
        os.makedirs(os.path.join(folder, "data"))
        open(os.path.join(folder, "data", "meta.js"), "w").close()
        raise RuntimeError("stopped")
    assert not memory.exists("/iface/report")
    with storage_for(out).writable_tree(out) as folder:
        os.makedirs(os.path.join(folder, "data"))
        with open(os.path.join(folder, "data", "meta.js"), "w") as f:
            f.write("window.REPORT = {};")
    assert memory.cat_file("/iface/report/data/meta.js") == b"window.REPORT = {};"
    assert not [p for p in memory.find("/iface/report") if ".imagesieve-tmp-" in p]  # no temp key left
    local_out = str(tmp_path / "report")
    with storage_for(local_out).writable_tree(local_out) as folder:
        assert folder == local_out  # a local folder is written in place


def test_a_shard_copy_only_for_objects(memory, local):
    assert shard_copy_of(os.path.join(local, "a.tar")) is None  # read where it lies
    copy = shard_copy_of("memory://iface/a.tar")
    assert isinstance(copy, ShardCopy)
    with open(copy.path(), "rb") as f:
        assert f.read() == b"a"


def test_what_only_a_local_path_can_be(local, tmp_path):
    a = os.path.join(local, "a.tar")
    assert local_file(a) == a and local_file("file://" + a) == a and local_file(local) is None
    assert local_file("memory://iface/a.tar") is None
    assert local_folder(local) == local and local_folder(a) is None and local_folder("memory://iface") is None
    assert missing_locally(os.path.join(local, "gone")) and not missing_locally(a)
    assert not missing_locally("memory://iface/gone")  # an object's absence is told by listing it
    assert supports_hard_links(local) and not supports_hard_links("s3://bucket/out")
    assert same_file_system(str(tmp_path / "not" / "yet"), local)
    makedirs("memory://iface/never")  # object storage has no folders to make
    assert listed_path("s3://b/x.tar", local) == "s3://b/x.tar" and listed_path("a.tar", local) == a


def test_one_identity_for_every_name_of_a_file(local, tmp_path):
    a = os.path.join(local, "a.tar")
    os.link(a, tmp_path / "hard.tar")
    os.symlink(a, tmp_path / "soft.tar")
    assert file_identity(a) == file_identity(str(tmp_path / "hard.tar")) == file_identity(str(tmp_path / "soft.tar"))
    assert file_identity(a) != file_identity(os.path.join(local, "b.tar"))
    assert file_identity("memory://iface/a.tar") is None  # an object has one key
    assert canonical(str(tmp_path / "soft.tar")) == a
    assert canonical("s3a://bucket/x/") == canonical("s3://bucket/x")
