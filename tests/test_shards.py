"""Reading WebDataset shards: the key rule, every image format, sidecars, and refusing bad tars."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
from conftest import encode, photo_tiles

from imagesieve.stages.io import ImageReaderStage
from imagesieve.stages.io.partitioning import list_shards
from imagesieve.tar.names import ShardError, split_key
from imagesieve.tar.read import iter_samples

pytestmark = pytest.mark.usefixtures("both_tar_parsers")


def read(path: str):
    return ImageReaderStage().read_shard(path, os.path.basename(path))


def raw_tar(path, members: list[tuple[str, bytes]], kind=tarfile.REGTYPE, linkname="") -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type, info.linkname = len(data), kind, linkname
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return str(path)


@pytest.mark.parametrize("name, expected", [
    ("000001.jpg", ("000001", "jpg")),
    ("a.b.jpg", ("a", "b.jpg")),
    ("dir/sub/KEY.seg.png", ("dir/sub/KEY", "seg.png")),
    ("dir.v2/KEY.json", ("dir.v2/KEY", "json")),
    ("noextension", None),
    ("dir/.hidden", None),
    ("a.", ("a", "")),
    ("dir/", None),
])
def test_key_rule_matches_webdataset(name, expected):
    import re

    webdataset_rule = re.match(r"^((?:.*/|)[^./]+)[.]([^/]*)$", name)
    assert split_key(name) == expected == (webdataset_rule.groups() if webdataset_rule else None)


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tiff"])
def test_reads_every_image_format_with_sidecars(make_shard, ext):
    batch = read(make_shard(n=3, ext=ext, start=5))
    assert [i.image_id for i in batch.data] == ["00000005", "00000006", "00000007"]
    first = batch.data[0]
    assert list(first.members) == sorted([ext, "txt", "json"])  # tar order (TarWriter sorts)
    assert first.image_ext == ext
    assert first.read_bytes("txt") == b"caption 00000005"
    assert not first.is_decoded
    assert first.image_data.shape[2] == 3  # decoded lazily, once, on first access
    assert first.is_decoded and first.decode() is first.image_data
    assert not batch.data[1].is_decoded


def test_ids_are_keys_not_positions(make_shard):
    batch = read(make_shard(keys=["zebra", "apple", "m.x"], n=3))
    assert [i.image_id for i in batch.data] == ["zebra", "apple", "m"]


def test_member_bytes_are_references_not_copies(make_shard):
    path = make_shard(n=2)
    ref = read(path).data[1].members["jpg"]
    assert ref.data is None and ref.shard == path
    with open(path, "rb") as f:
        f.seek(ref.offset)
        assert f.read(ref.size) == ref.read()


@pytest.mark.parametrize("name", ["/etc/evil.jpg", "../evil.jpg", "a/../../evil.jpg", "C:/evil.jpg",
                                  "C:\\evil.jpg"])
def test_refuses_unsafe_member_paths(tmp_path, name):
    path = raw_tar(tmp_path / "bad.tar", [(name, encode(photo_tiles()[0]))])
    with pytest.raises(ShardError, match="bad.tar: member .*(absolute path|'\\.\\.')"):
        read(path)


@pytest.mark.parametrize("kind, word", [(tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hard link"),
                                        (tarfile.CHRTYPE, "character device"), (tarfile.FIFOTYPE, "fifo")])
def test_refuses_links_and_devices(tmp_path, kind, word):
    path = raw_tar(tmp_path / "links.tar", [("x.jpg", b"")], kind=kind, linkname="/etc/passwd")
    with pytest.raises(ShardError, match=f"links.tar: member 'x.jpg' is a {word}"):
        read(path)


def test_garbage_file_named_tar(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(ShardError, match="junk.tar: corrupt tar \\(not a tar file"):
        read(str(tmp_path / "junk.tar"))


def test_truncated_tar(make_shard):
    path = make_shard(n=4)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ShardError, match="truncated"):
        read(path)


def test_corrupt_header_in_the_middle_is_not_silently_ignored(make_shard):
    path = make_shard(n=4)
    offset = read(path).data[2].members["jpg"].offset - 512  # the header of sample 2's image
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x7f" * 200)
    with pytest.raises(ShardError, match="corrupt tar"):
        list(iter_samples(path))


def test_sample_without_image_member(tmp_path):
    path = raw_tar(tmp_path / "s.tar", [("a.jpg", encode(photo_tiles()[0])), ("b.txt", b"caption only")])
    with pytest.raises(ShardError, match="s.tar: sample 'b' has no image member \\(members: b.txt\\)"):
        read(path)


def test_zero_byte_image_member_is_read_and_fails_only_where_decoded(tmp_path):
    """Removal copies it byte for byte; a stage that decodes it says what is wrong (or skips it)."""
    from imagesieve.images.decode import ImageDecodeError

    path = raw_tar(tmp_path / "z.tar", [("a.jpg", b""), ("a.txt", b"x")])
    [image] = read(path).data
    assert image.members["jpg"].size == 0
    with pytest.raises(ImageDecodeError, match="z.tar: sample 'a': image member is empty"):
        image.decode()


def test_duplicate_key_within_a_shard(tmp_path):
    jpg = encode(photo_tiles()[0])
    path = raw_tar(tmp_path / "d.tar", [("a.jpg", jpg), ("b.jpg", jpg), ("a.txt", b"x")])
    with pytest.raises(ShardError, match="d.tar: key 'a' appears twice"):
        read(path)
    path = raw_tar(tmp_path / "e.tar", [("a.jpg", jpg), ("a.jpg", jpg)])
    with pytest.raises(ShardError, match="e.tar: sample 'a' has two 'jpg' members"):
        read(path)


def test_unicode_and_long_keys(make_shard):
    keys = ["café-ü", "日本語", "k" * 300]
    assert [i.image_id for i in read(make_shard(keys=keys, n=3)).data] == keys


def test_listing_shards_skips_non_tar_files(make_shard, tmp_path):
    make_shard("00000.tar")
    make_shard("nested/00001.tar")
    (tmp_path / "shards" / "00000.parquet").write_bytes(b"img2dataset metadata")
    (tmp_path / "shards" / "notes.json").write_text("x")
    assert [rel for _, rel in list_shards(str(tmp_path / "shards"))] == ["00000.tar", "nested/00001.tar"]
    assert [rel for _, rel in list_shards(str(tmp_path / "shards" / "*.tar"))] == ["00000.tar"]
    with pytest.raises(FileNotFoundError, match="no tar shards"):
        list_shards(str(tmp_path / "shards" / "*.parquet"))
    with pytest.raises(ValueError, match="notes.json: not a tar shard"):
        list_shards(str(tmp_path / "shards" / "notes.json"))


def test_shard_specs_as_webdataset_users_write_them(make_shard, tmp_path):
    for k in range(4):
        make_shard(f"{k:05d}.tar", n=2, start=2 * k)
    make_shard("other/00000.tar", n=2, folder="more")
    shards = tmp_path / "shards"
    assert [rel for _, rel in list_shards(str(shards / "{00001..00003}.tar"))] == ["00001.tar", "00002.tar",
                                                                                   "00003.tar"]
    assert [rel for _, rel in list_shards(str(shards / "{00000,00002}.tar"))] == ["00000.tar", "00002.tar"]
    listing = tmp_path / "shards.txt"  # one spec per line, relative to the list, comments and blanks skipped
    listing.write_text("# train\nshards/00000.tar\n\nshards/{00002..00003}.tar\nmore/other/00000.tar\n")
    assert [rel for _, rel in list_shards(str(listing))] == ["more/other/00000.tar", "shards/00000.tar",
                                                             "shards/00002.tar", "shards/00003.tar"]
    # several sources: relative names from their common folder, so two 00000.tar never collide
    assert [rel for _, rel in list_shards([str(shards / "00000.tar"), str(tmp_path / "more")])] == [
        "more/other/00000.tar", "shards/00000.tar"]
    with pytest.raises(FileNotFoundError, match="00008.tar: no such file"):
        list_shards(str(shards / "{00008..00009}.tar"))


def test_members_of_no_sample_are_kept_aside_not_dropped(tmp_path):
    jpg = encode(photo_tiles()[0])
    path = raw_tar(tmp_path / "mac.tar", [("README", b"about"), ("a.jpg", jpg), ("._a.jpg", b"appledouble"),
                                           ("b.jpg", jpg)])
    loose = []
    assert [s.key for s in iter_samples(path, loose)] == ["a", "b"]
    assert [ref.name for ref in loose] == ["README", "._a.jpg"]
    with pytest.raises(ShardError, match="member 'README' has no extension"):
        list(iter_samples(path))


def test_members_changed_by_a_stage_are_written_as_changed(tmp_path, make_shard):
    """The writer copies byte ranges straight from the reader's table only while each image's members
    are the ones read; a stage that replaces or edits them gets exactly what it left."""
    from imagesieve.stages.io import ImageWriterStage
    from imagesieve.stages.io.reader import ImageReaderStage

    shard = make_shard("00000.tar", n=3)
    batch = ImageReaderStage().read_shard(shard, "00000.tar")
    first, second, third = batch.data
    del first.members["txt"]  # edited in place
    second.members = {"jpg": second.members["jpg"]}  # replaced
    assert third.members["json"].size > 0  # only read
    ImageWriterStage(output_dir=str(tmp_path / "out")).process(batch)
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        names = tar.getnames()
    assert names == ["00000000.jpg", "00000000.json", "00000001.jpg", "00000002.jpg", "00000002.json",
                     "00000002.txt"]


def test_untouched_samples_are_copied_byte_for_byte_with_their_headers(tmp_path, make_shard):
    from imagesieve.stages.io import ImageWriterStage
    from imagesieve.stages.io.reader import ImageReaderStage

    shard = make_shard("00000.tar", n=5)
    batch = ImageReaderStage().read_shard(shard, "00000.tar")
    ImageWriterStage(output_dir=str(tmp_path / "out")).process(batch)
    assert (tmp_path / "out" / "00000.tar").read_bytes().rstrip(b"\0") == \
        open(shard, "rb").read().rstrip(b"\0")


def _write(batch, out) -> list[tarfile.TarInfo]:
    from imagesieve.stages.io import ImageWriterStage

    ImageWriterStage(output_dir=str(out)).process(batch)
    with tarfile.open(out / "00000.tar") as tar:
        return tar.getmembers()


def test_a_stage_that_renames_an_image_is_refused_by_the_writer(tmp_path, make_shard):
    from imagesieve.stages.io.writer import AccountingError

    batch = read(make_shard("00000.tar", n=3))
    batch.data[1].image_id += "_x"
    with pytest.raises(AccountingError, match="changed the image_id of sample '00000001' to '00000001_x'"):
        _write(batch, tmp_path / "out")


def test_a_member_edited_in_place_is_written_as_edited(tmp_path, make_shard):
    batch = read(make_shard("00000.tar", n=2))
    ref = batch.data[0].members["txt"]
    ref.data, ref.size = b"NEW", 3
    members = _write(batch, tmp_path / "out")
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        assert tar.extractfile("00000000.txt").read() == b"NEW"
    assert [m.name for m in members][:3] == ["00000000.jpg", "00000000.json", "00000000.txt"]


@pytest.mark.parametrize("with_loose", [False, True])
def test_output_shards_keep_the_input_order_whatever_order_a_stage_leaves(tmp_path, make_shard, with_loose):
    shard = make_shard("00000.tar", n=4)
    if with_loose:
        with tarfile.open(shard, "a") as tar:
            info = tarfile.TarInfo("README")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    batch = read(shard)
    batch.data = list(reversed(batch.data))
    names = [m.name for m in _write(batch, tmp_path / "out")]
    assert names == [m.name for m in tarfile.open(shard).getmembers()]


def test_directory_entries_are_kept_so_an_untouched_shard_is_copied_identically(tmp_path):
    jpg = encode(photo_tiles()[0])
    path = tmp_path / "d.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(_dir("part"))
        for name, data in [("part/a.jpg", jpg), ("part/a.txt", b"x"), ("part/b.jpg", jpg)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    batch = ImageReaderStage().read_shard(str(path), "00000.tar")
    assert [i.image_id for i in batch.data] == ["part/a", "part/b"]
    _write(batch, tmp_path / "out")
    assert (tmp_path / "out" / "00000.tar").read_bytes().rstrip(b"\0") == path.read_bytes().rstrip(b"\0")


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_a_pax_sparse_member_is_refused(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("GNUSparseFile.0/a.jpg")
        info.size = 3
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "a.jpg",
                            "GNU.sparse.realsize": "100"}
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ShardError, match="is a sparse file; refusing the shard"):
        read(str(path))


def test_a_header_with_a_signed_checksum_is_read_as_tar_reads_it(tmp_path):
    jpg = encode(photo_tiles()[0])
    data = bytearray(open(raw_tar(tmp_path / "x.tar", [("é.jpg", jpg)]), "rb").read())
    header = data[:512]
    header[148:156] = b" " * 8
    signed = sum(b - 256 if b >= 128 else b for b in header)
    data[148:156] = b"%06o\0 " % signed
    path = tmp_path / "signed.tar"
    path.write_bytes(bytes(data))
    assert tarfile.open(path).getnames() == ["é.jpg"]
    assert [i.image_id for i in read(str(path)).data] == ["é"]


def test_a_gzipped_shard_keeps_each_members_mode_and_mtime(tmp_path):
    path = tmp_path / "g.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("a.jpg", encode(photo_tiles()[0])), ("a.txt", b"caption")]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, 1_234_567_890
            tar.addfile(info, io.BytesIO(data))
    from imagesieve.stages.io import ImageWriterStage

    ImageWriterStage(output_dir=str(tmp_path / "out")).process(
        ImageReaderStage().read_shard(str(path), "g.tar.gz"))
    with tarfile.open(tmp_path / "out" / "g.tar.gz") as tar:
        assert [(m.name, m.mode, m.mtime) for m in tar] == [("a.jpg", 0o600, 1_234_567_890),
                                                           ("a.txt", 0o600, 1_234_567_890)]


def test_the_image_member_is_a_plain_image_extension_in_list_order_never_a_mask_before_it(tmp_path):
    """A sample's image is the member whose whole extension names an image (jpg, jpeg, png, webp, ... in
    that order), before any compound one (`alpha.png`, `depth.png`), whatever the tar order; among compound
    ones only, the first by the order of their last part, then in tar order. Both grouping paths agree."""
    tile, mask = encode(photo_tiles()[0]), encode(np.zeros((8, 8), np.uint8), "png")
    samples = {
        "a": ["alpha.png", "jpg", "txt"],  # a mask sorted before the photo
        "b": ["depth.png", "png", "jpg"],  # jpg before png, whatever the tar order
        "c": ["PNG", "webp"],  # any case; png before webp
        "d": ["seg.webp", "alpha.png", "depth.png"],  # compound only: png before webp, then tar order
        "e": ["txt", "JPEG", "jpg.txt"],  # `jpg.txt` is no image
    }
    members = [(f"{key}.{ext}", tile if ext in ("jpg", "JPEG", "png", "PNG", "webp") else mask)
               for key, exts in samples.items() for ext in exts]
    path = raw_tar(tmp_path / "s.tar", members)
    images = {image.image_id: image.image_ext for image in read(path).data}
    assert images == {"a": "jpg", "b": "jpg", "c": "PNG", "d": "alpha.png", "e": "JPEG"}
    assert read(path).data[0].image_data.shape == (64, 64, 3)  # the photo, not the mask


def test_shards_in_a_folder_and_under_a_link_to_it_are_listed_under_the_real_name(make_shard, tmp_path):
    """`real/` and `alias -> real`: the shard is `real/00000.tar`, not the name of the link sorted first."""
    make_shard("real/00000.tar", n=2)
    os.symlink(tmp_path / "shards" / "real", tmp_path / "shards" / "alias")
    assert [rel for _, rel in list_shards(str(tmp_path / "shards"))] == ["real/00000.tar"]
