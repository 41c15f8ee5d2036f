"""Both header parsers (the Python scanner, the compiled bulk parser) against Python's `tarfile`,
on valid and corrupted tars.

Valid tars of every format tarfile writes (ustar, GNU, PAX; long and non-ASCII names,
directories, empty members) must list exactly what tarfile lists. A corrupted tar (a flipped
byte, a cut) must either be refused or list exactly what tarfile lists: never a silent misreading.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagesieve.tar.headers import parse_headers
from imagesieve.tar.names import ShardError
from imagesieve.tar.read import _table_from_entries, _table_from_headers, read_table
from imagesieve.tar.scan import scan

NAME_PART = st.text(alphabet=st.sampled_from("abcXYZ019_-é日"), min_size=1, max_size=12)
MEMBER = st.tuples(st.lists(NAME_PART, min_size=1, max_size=3), st.sampled_from(["jpg", "txt", "json", "tar.gz"]),
                   st.integers(0, 1500), st.booleans())
FORMATS = st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])

pytestmark = pytest.mark.usefixtures("both_tar_parsers")


def make_tar(members: list, fmt: int, long_name: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for k, (parts, ext, size, is_dir) in enumerate(members):
            name = "/".join(parts) + f"{k}.{ext}"
            if long_name and k == 0:
                name = "d" * 90 + "/" + "n" * 40 + f"{k}.{ext}"  # past the 100-byte name field
            if is_dir:
                info = tarfile.TarInfo("/".join(parts) + f"{k}")
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([k % 251]) * size))
    return buffer.getvalue()


def tarfile_listing(data: bytes) -> list[tuple[str, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isreg()]


def our_listing(path) -> list[tuple[str, int, int]]:
    return our_listing_of(read_table(str(path)))


def our_listing_of(table) -> list[tuple[str, int, int]]:
    """Regular members (directory entries, kept as members of no sample named "dir/", left out)."""
    return [(n, int(o), int(s)) for n, o, s in zip(table.names, table.data_offsets, table.sizes, strict=True)
            if not n.endswith("/")]


def write(tmp_path, data: bytes, name: str = "t.tar"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(MEMBER, min_size=1, max_size=12), fmt=FORMATS, long_name=st.booleans())
def test_valid_tars_list_exactly_what_tarfile_lists(tmp_path, members, fmt, long_name):
    if fmt == tarfile.USTAR_FORMAT and (long_name or any(ord(c) > 127 for m in members for p in m[0] for c in p)):
        return  # ustar cannot hold these names
    data = make_tar(members, fmt, long_name)
    path = write(tmp_path, data)
    assert our_listing(path) == tarfile_listing(data)
    with open(path, "rb") as f:
        bulk = parse_headers(f.fileno(), len(data))
    if bulk is not None:  # the compiled path took it: it must agree with the Python scanner too
        fast, slow = _table_from_headers(str(path), bulk), _table_from_entries(str(path), scan(str(path)))
        assert (fast.names, fast.header_offsets.tolist(), fast.data_offsets.tolist(), fast.sizes.tolist()) == \
            (slow.names, slow.header_offsets.tolist(), slow.data_offsets.tolist(), slow.sizes.tolist())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(MEMBER, min_size=1, max_size=8), fmt=FORMATS, where=st.floats(0, 1),
       value=st.integers(0, 255), cut=st.booleans())
def test_a_corrupted_tar_is_refused_or_read_exactly_as_tarfile_reads_it(tmp_path, members, fmt, where, value, cut):
    if fmt == tarfile.USTAR_FORMAT and any(ord(c) > 127 for m in members for p in m[0] for c in p):
        return
    data = bytearray(make_tar(members, fmt, False))
    at = int(where * (len(data) - 1))
    if cut:
        data = data[:at]
    else:
        data[at] = value
    path = write(tmp_path, bytes(data))
    try:
        ours = our_listing(path)
    except ShardError:
        return  # refused: fine, whatever tarfile thinks
    assert ours == tarfile_listing(bytes(data))


def test_a_shard_larger_than_one_batch_of_rows_is_read_whole(tmp_path):
    """The compiled loop fills arrays of at most 65,536 rows, then resumes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for k in range(70_000):
            info = tarfile.TarInfo(f"{k:06d}.txt")
            tar.addfile(info, io.BytesIO(b""))
    path = write(tmp_path, buffer.getvalue())
    table = read_table(str(path))
    assert len(table) == 70_000 and table.keys[-1] == "069999"


def test_a_newline_in_a_member_name_takes_the_exact_path(tmp_path):
    data = make_tar([(["a\nb"], "jpg", 3, False), (["c"], "txt", 2, False)], tarfile.GNU_FORMAT, False)
    path = write(tmp_path, data)
    assert our_listing(path) == tarfile_listing(data)


@pytest.mark.parametrize("damage", ["checksum", "size past end", "garbage after end"])
def test_damage_is_named_with_its_offset(tmp_path, damage):
    data = bytearray(make_tar([(["a"], "jpg", 700, False), (["b"], "txt", 10, False)], tarfile.GNU_FORMAT, False))
    second = 512 + 1024  # the second header
    if damage == "checksum":
        data[second + 10] ^= 1
        expected = f"bad header checksum at byte {second}"
    elif damage == "size past end":
        data = data[:second + 512 + 5]
        expected = f"the member at byte {second} ends past the end of the file"
    else:
        data += b"junk" + bytes(508)
        expected = "data after the end-of-archive marker"
    with pytest.raises(ShardError, match=expected):
        read_table(str(write(tmp_path, bytes(data))))


def _set_checksum(data: bytearray, at: int, field: bytes) -> None:
    data[at + 148:at + 156] = field


def test_a_checksum_with_garbage_after_its_digits_is_refused(tmp_path):
    """Found by a hostile pass: six right digits then 0xff passed the vectorised check (tarfile stops
    there, GNU tar skips the header): damage, refused."""
    data = bytearray(make_tar([(["a"], "jpg", 700, False), (["b"], "txt", 10, False)], tarfile.USTAR_FORMAT, False))
    second = 512 + 1024
    block = bytes(data[second:second + 148]) + b" " * 8 + bytes(data[second + 156:second + 512])
    _set_checksum(data, second, f"{sum(block):06o}".encode() + b"\xff\x00")
    with pytest.raises(ShardError, match=f"bad header checksum at byte {second}"):
        read_table(str(write(tmp_path, bytes(data))))


def test_a_directory_entry_with_data_is_refused(tmp_path):
    """tarfile and GNU tar skip no data after a directory entry, so a member hidden in it would be a
    sample to them and none to a reader that skips it: such a shard is refused."""
    hidden = io.BytesIO()
    with tarfile.open(fileobj=hidden, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("secret.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    hidden_member = hidden.getvalue()[:1024]
    directory = tarfile.TarInfo("d/")
    directory.type, directory.size = tarfile.DIRTYPE, len(hidden_member)
    data = directory.tobuf(tarfile.USTAR_FORMAT) + hidden_member + bytes(1024)
    assert "secret.jpg" in tarfile.open(fileobj=io.BytesIO(data)).getnames()
    with pytest.raises(ShardError, match="directory entry at byte 0 has a non-zero size"):
        read_table(str(write(tmp_path, data)))


def test_a_decoding_workflow_loads_the_compiled_parser_once_the_python_scanner_has_read_enough(tmp_path, monkeypatch):
    from imagesieve.tar import read

    path = str(write(tmp_path, make_tar([(["a"], "jpg", 10, False), (["a"], "txt", 3, False)], tarfile.GNU_FORMAT,
                                        False)))
    compiled = []
    monkeypatch.setattr(read, "_members_scanned", 0)
    monkeypatch.setattr(read, "_parse_compiled", lambda *args: compiled.append(1) or parse_headers(*args))
    listings = [our_listing_of(read_table(path, scan_first=3)) for _ in range(3)]
    assert compiled == [1] and read._members_scanned == 4  # two reads by the scanner, then the compiled parser
    assert listings[0] == listings[1] == listings[2] == tarfile_listing(Path(path).read_bytes())
    read_table(path)  # by default: the compiled parser at once
    assert compiled == [1, 1]
