"""A folder tree of image files as input: IDs are relative paths, the output mirrors the tree."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import encode, photo_tiles

from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline.inputs import input_units
from imagesieve.workflows.dedup import dedup
from imagesieve.workflows.find import FindConfig

ONE = LocalExecutor(1)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def photos(tmp_path) -> Path:
    """8 distinct photos in two subfolders (mixed formats and case), 3 copies elsewhere, a caption file."""
    tiles = photo_tiles()
    root = tmp_path / "photos"
    for k in range(8):
        folder = root / ("cats" if k % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        ext, fmt = [("jpg", "jpeg"), ("PNG", "png"), ("webp", "webp"), ("JPEG", "jpeg")][k % 4]
        (folder / f"img-{k}.{ext}").write_bytes(encode(tiles[k], fmt))
    copies = root / "inbox" / "copies"
    copies.mkdir(parents=True)
    (copies / "again-0.jpg").write_bytes((root / "dogs" / "img-0.jpg").read_bytes())  # exact copy
    (copies / "again-1.png").write_bytes(encode(tiles[1], "png"))  # same pixels as cats/img-1.PNG
    (copies / "again-2.jpg").write_bytes(encode(tiles[2], "jpeg", quality=60))  # recompressed
    (root / "dogs" / "img-0.txt").write_text("a caption beside the image")
    return root


def test_dedup_of_an_image_folder_mirrors_the_tree_without_the_copies(photos, tmp_path):
    before = tree_digest(photos)
    out = tmp_path / "out"
    summary = dedup(str(photos), str(out), FindConfig(), executor=ONE)
    assert tree_digest(photos) == before  # the input is never written
    removed = set(pq.read_table(out / "removed.parquet").column("id").to_pylist())
    assert removed == {"inbox/copies/again-0.jpg", "inbox/copies/again-1.png", "inbox/copies/again-2.jpg"}
    kept = {rel: digest for rel, digest in tree_digest(out / "shards").items()
            if not rel.startswith("_imagesieve/") and rel != "summary.json"}  # the run's own records
    assert set(kept) == set(before) - removed
    assert all(kept[rel] == before[rel] for rel in kept)  # byte for byte, the caption file included
    assert summary.samples_in == 11 and summary.kept == 8 and summary.removed == 3
    groups = pq.read_table(out / "groups").to_pylist()
    assert {g["kept_id"] for g in groups} == {"dogs/img-0.jpg", "cats/img-1.PNG", "dogs/img-2.webp"}
    index = (out / "report" / "index.html").read_text()
    assert "11" in index and len(os.listdir(out / "report" / "thumbs")) == 6  # every group member has one


def test_hard_links_on_request(photos, tmp_path):
    out = tmp_path / "out"
    dedup(str(photos), str(out), FindConfig(), executor=ONE, link=True)
    assert os.path.samefile(out / "shards" / "cats" / "img-1.PNG", photos / "cats" / "img-1.PNG")


def test_rerun_redoes_only_a_changed_chunk(photos, tmp_path):
    from imagesieve.pipeline.inputs import folder_units
    from imagesieve.stages.io.partitioning import walk_files

    units = folder_units(str(photos), list(walk_files(str(photos))), chunk=4)
    assert [len(u.paths) for u in units] == [4, 4, 3]
    before = [u.fingerprint for u in units]
    (photos / "dogs" / "img-6.webp").write_bytes(encode(photo_tiles()[20], "webp"))
    after = [u.fingerprint for u in folder_units(str(photos), list(walk_files(str(photos))), chunk=4)]
    assert [b == a for b, a in zip(before, after, strict=True)].count(False) == 1


def test_an_output_folder_overlapping_the_input_is_refused_both_ways(photos):
    with pytest.raises(ValueError, match="lies inside the input"):
        input_units(str(photos), str(photos / "clean"))
    with pytest.raises(ValueError, match="is the input"):
        input_units(str(photos), str(photos))
    with pytest.raises(ValueError, match="lies inside the output folder"):
        input_units(str(photos / "cats"), str(photos))


def test_a_folder_without_images_or_shards_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(FileNotFoundError, match="no tar shards and no image files"):
        input_units(str(tmp_path / "empty"), str(tmp_path / "out"))


def test_an_output_inside_the_input_is_refused_before_anything_is_written(photos):
    before = sorted(p for p in photos.rglob("*"))
    with pytest.raises(ValueError, match="lies inside the input"):
        dedup(str(photos), str(photos / "out"), FindConfig(), executor=ONE)
    assert sorted(p for p in photos.rglob("*")) == before


def test_an_input_inside_the_output_is_refused_before_anything_is_touched(photos, tmp_path):
    planted = photos / ".notes.imagesieve-tmp-42"  # a user's file that looks like one of our temp files
    planted.write_text("precious")
    with pytest.raises(ValueError, match="lies inside the output folder"):
        dedup(str(photos), str(tmp_path), FindConfig(), executor=ONE)
    assert planted.read_text() == "precious"


def test_input_files_named_like_the_runs_own_records_are_refused(photos, tmp_path):
    (photos / "summary.json").write_text('{"mine": 1}')
    with pytest.raises(ValueError, match="summary.json: the output keeps its own"):
        dedup(str(photos), str(tmp_path / "out"), FindConfig(), executor=ONE)


def test_a_symlinked_folder_never_stands_for_the_real_one(tmp_path):
    """`sl/real/` and the link `sl/alias -> real`: the real folder is read under its own name (the link
    sorted first and took its place: `alias/` in the output and in every ID, no `real/`). A folder reached
    only through a link keeps the link's name; a link loop still ends."""
    root = tmp_path / "sl"
    _photo_files(root / "real", 3)
    _photo_files(root / "real" / "sub", 2, start=3)
    _photo_files(tmp_path / "elsewhere", 2, start=5)
    (root / "alias").symlink_to(root / "real")  # sorts before `real`
    (root / "a-sub").symlink_to(root / "real" / "sub")  # a link to a real folder further down
    (root / "real" / "up").symlink_to(root)  # a loop
    (root / "ext").symlink_to(tmp_path / "elsewhere")  # reached only through a link
    out = tmp_path / "out"
    summary = dedup(str(root), str(out), FindConfig(), executor=ONE)
    assert summary.samples_in == 7
    ids = sorted(pq.read_table(out / "hashes").column("id").to_pylist())
    assert ids == ["ext/5.jpg", "ext/6.jpg", "real/0.jpg", "real/1.jpg", "real/2.jpg", "real/sub/3.jpg",
                   "real/sub/4.jpg"]
    shards = out / "shards"
    assert sorted(p.name for p in shards.iterdir() if not p.name.startswith(("_", "summary"))) == ["ext", "real"]
    assert not (shards / "alias").exists() and not (shards / "a-sub").exists()


def _photo_files(folder: Path, count: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(start, start + count):
        (folder / f"{k}.jpg").write_bytes(encode(photo_tiles()[k]))


def test_loose_images_beside_shards_are_refused_however_input_is_named(photos, make_shard, tmp_path):
    """Fifth hostile pass: mixed input was refused only when INPUT was one folder; through a glob or a list
    the loose images were in neither the output nor the removed list. And a shard named `00001.TAR` was
    skipped without a word."""
    shard = make_shard("00000.tar", n=4, folder="mixed/a")
    mixed = tmp_path / "mixed"
    (mixed / "b").mkdir()
    (mixed / "b" / "unique.jpg").write_bytes((photos / "dogs" / "img-0.jpg").read_bytes())
    for spec in (str(mixed / "*" / "*"), [str(mixed / "a"), str(mixed / "b")], [shard, str(photos)]):
        mixed_kinds = r"holds both tar shards \(.*00000.tar\) and loose image files \(.*\.(jpg|PNG)"
        with pytest.raises(ValueError, match=mixed_kinds):
            dedup(spec, str(tmp_path / "out"), FindConfig(method="exact"), executor=ONE)
        assert not (tmp_path / "out").exists()

    os.rename(shard, mixed / "a" / "00000.TAR")
    for spec in (str(mixed / "a"), str(mixed / "a" / "*")):
        with pytest.raises(ValueError, match=r"00000.TAR: a tar shard whose extension is not lower case"):
            dedup(spec, str(tmp_path / "out"), FindConfig(method="exact"), executor=ONE)


def test_a_dedups_clean_image_folder_is_input_for_the_next_run(photos, tmp_path):
    """Fifth hostile pass: DEDUP/shards of an image folder could not be INPUT (its own summary.json was taken
    for a user's file that the output would overwrite). Its records are not data: the images and captions are."""
    first = dedup(str(photos), str(tmp_path / "one"), FindConfig(method="phash"), executor=ONE)
    again = dedup(str(tmp_path / "one" / "shards"), str(tmp_path / "two"), FindConfig(method="phash"), executor=ONE)
    assert (again.images, again.removed) == (first.images - first.removed, 0)
    def data(folder: Path) -> set[str]:
        return {p for p in tree_digest(folder) if not p.startswith(("_imagesieve", "summary.json", "removed.parquet"))}

    assert data(tmp_path / "two" / "shards") == data(tmp_path / "one" / "shards") != set()


def test_a_link_never_gives_the_output_a_mode_a_copy_would_not(photos, tmp_path):
    """Fifth hostile pass: with --link, a 4755 image run under umask 077 appeared in OUT as -rwsr-xr-x. A file
    whose mode a copy would not keep (setuid, or wider than the umask) is copied instead of linked."""
    setuid, plain = photos / "dogs" / "img-0.jpg", photos / "dogs" / "img-2.webp"
    os.chmod(setuid, 0o4755)
    os.chmod(plain, 0o600)
    old = os.umask(0o077)
    try:
        dedup(str(photos), str(tmp_path / "out"), FindConfig(method="exact"), executor=ONE, link=True)
    finally:
        os.umask(old)
    out = tmp_path / "out" / "shards" / "dogs"
    assert oct(os.stat(out / "img-0.jpg").st_mode & 0o7777) == oct(0o700)  # copied: no setuid, within the umask
    assert os.stat(out / "img-0.jpg").st_ino != os.stat(setuid).st_ino
    assert os.stat(out / "img-2.webp").st_ino == os.stat(plain).st_ino  # 0600 fits umask 077: linked
    assert (out / "img-0.jpg").read_bytes() == setuid.read_bytes()


@pytest.mark.parametrize("link", [False, True])
def test_a_kept_file_the_user_edited_is_never_replaced_when_its_chunk_is_redone(photos, tmp_path, link):
    """OUT/dogs/img-2.webp edited by its user, then an image added to the input (its chunk is redone):
    the user's file stays and the run says which file; without the edit the same rerun goes through
    (unchanged images are the same bytes, or, with --link, the same file)."""
    out = tmp_path / "out"
    dedup(str(photos), str(out), FindConfig(), executor=ONE, link=link)
    untouched = tmp_path / "untouched"
    dedup(str(photos), str(untouched), FindConfig(), executor=ONE, link=link)
    mine = b"the user's own edit"
    edited = out / "shards" / "dogs" / "img-2.webp"
    edited.unlink()  # (a --link output is the input's own inode: an editor writes a new file)
    edited.write_bytes(mine)
    (photos / "cats" / "new.jpg").write_bytes(encode(photo_tiles()[9], "jpeg"))
    for _ in range(2):  # pass 11: the refused run's record of what it was placing let the next one through
        with pytest.raises(ValueError, match=r"img-2\.webp: this output file is not the one imagesieve wrote"):
            dedup(str(photos), str(out), FindConfig(), executor=ONE, link=link)
    assert edited.read_bytes() == mine
    summary = dedup(str(photos), str(untouched), FindConfig(), executor=ONE, link=link)
    assert summary.kept == 9 and (untouched / "shards" / "cats" / "new.jpg").exists()
    if not link:  # pass 9: an edit that keeps the size (a retouched bitmap) was replaced as ours
        kept = untouched / "shards" / "dogs" / "img-0.jpg"
        same_size = bytes(b ^ 1 if k == len(kept.read_bytes()) - 3 else b for k, b in enumerate(kept.read_bytes()))
        kept.write_bytes(same_size)
        (photos / "cats" / "newer.jpg").write_bytes(encode(photo_tiles()[11], "jpeg"))
        with pytest.raises(ValueError, match=r"img-0\.jpg: this output file is not the one imagesieve wrote"):
            dedup(str(photos), str(untouched), FindConfig(), executor=ONE, link=link)
        assert kept.read_bytes() == same_size


def test_a_rerun_without_link_makes_copies_not_links(photos, tmp_path):
    """Pass 8: `dedup --link`, then the same without --link, reported every chunk done and kept the hard
    links, so editing the supposed copy changed the input. `dedup` redoes the chunks as copies; `remove`
    refuses a folder made with the other setting."""
    out = tmp_path / "out"
    dedup(str(photos), str(out), FindConfig(), executor=ONE, link=True)
    assert os.path.samefile(out / "shards" / "cats" / "img-1.PNG", photos / "cats" / "img-1.PNG")
    dedup(str(photos), str(out), FindConfig(), executor=ONE)
    copy = out / "shards" / "cats" / "img-1.PNG"
    assert not os.path.samefile(copy, photos / "cats" / "img-1.PNG")
    assert copy.read_bytes() == (photos / "cats" / "img-1.PNG").read_bytes()
    from imagesieve.workflows.remove import remove_duplicates

    ids = out / "duplicates"
    remove_duplicates(str(photos), str(tmp_path / "linked"), str(ids), executor=ONE, link=True)
    with pytest.raises(ValueError, match="holds a run with another link setting"):
        remove_duplicates(str(photos), str(tmp_path / "linked"), str(ids), executor=ONE)


def test_curator_ids_on_an_image_folder_are_refused_before_anything_is_made(photos, tmp_path):
    """Pass 8: `remove --id-scheme curator` on an image folder was refused inside a worker, naming
    `chunk-00000`, and left OUT/_imagesieve behind."""
    from conftest import write_ids

    from imagesieve.workflows.remove import remove_duplicates

    write_ids(tmp_path / "ids", ["photos_000001"])
    with pytest.raises(ValueError, match="is an image folder, whose IDs are file paths: use --id-scheme key"):
        remove_duplicates(str(photos), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE,
                          id_scheme="curator")
    assert not (tmp_path / "out").exists()


def test_a_moved_clean_image_batch_is_read_without_its_runs_lists(photos, tmp_path):
    """Pass 9: a deduplicated image batch moved into the dataset was read as data (right) with its run's
    summary.json and removed.parquet, which the next dedup copied into its clean output as data files."""
    from imagesieve.workflows.remove import remove_duplicates

    batch = tmp_path / "batch" / "birds"
    batch.mkdir(parents=True)
    for k in range(3):
        (batch / f"b-{k}.png").write_bytes(encode(photo_tiles()[30 + k], "png"))
    from conftest import write_ids

    write_ids(tmp_path / "ids", ["birds/b-0.png"])
    remove_duplicates(str(tmp_path / "batch"), str(tmp_path / "clean"), str(tmp_path / "ids"), executor=ONE)
    os.rename(tmp_path / "clean", photos / "batch")
    out = tmp_path / "out"
    summary = dedup(str(photos), str(out), FindConfig(), executor=ONE)
    shards = out / "shards" / "batch"
    assert sorted(p.name for p in shards.rglob("*") if p.is_file()) == ["b-1.png", "b-2.png"]
    assert summary.samples_in == 13


def test_other_files_are_copied_again_when_edited_and_never_over_a_users_file(photos, tmp_path):
    """Pass 11: a caption edited to the same length was never copied again, and a user's file in OUT at a
    caption's path was replaced without a check."""
    from imagesieve.workflows.remove import remove_duplicates

    ids = tmp_path / "ids"
    from conftest import write_ids

    write_ids(ids, ["inbox/copies/again-0.jpg"])
    out = tmp_path / "out"
    remove_duplicates(str(photos), str(out), str(ids), executor=ONE)
    caption = photos / "dogs" / "img-0.txt"
    caption.write_text(caption.read_text().replace("a caption", "A CAPTION"))  # the same length
    remove_duplicates(str(photos), str(out), str(ids), executor=ONE)
    assert (out / "dogs" / "img-0.txt").read_text() == caption.read_text()
    (out / "notes.txt").write_text("the user's own notes")
    (photos / "notes.txt").write_text("the dataset's notes, another file")
    with pytest.raises(ValueError, match=r"notes\.txt: this output file is not the one imagesieve wrote"):
        remove_duplicates(str(photos), str(out), str(ids), executor=ONE)
    assert (out / "notes.txt").read_text() == "the user's own notes"
