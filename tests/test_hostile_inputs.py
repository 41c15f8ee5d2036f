"""The second hostile pass (issue 20), one test per class of mistake: a run never writes into its input,
never reads an output back as input, never counts what it did not write."""

from __future__ import annotations

import os
import re
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import encode, photo_tiles, write_ids
from stages_for_tests import AddImageStage, RegroupStage

from imagesieve.cli import main
from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline import Pipeline
from imagesieve.report import write_report
from imagesieve.stages.io import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from imagesieve.tasks import AccountingError
from imagesieve.workflows.dedup import dedup
from imagesieve.workflows.find import FindConfig, find_duplicates
from imagesieve.workflows.remove import remove_duplicates

ONE = LocalExecutor(1)


def tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def shards(make_shard, tmp_path):
    make_shard("00000.tar", n=6)
    make_shard("00000.tar", n=6, start=6, folder="shards/part2")
    write_ids(tmp_path / "ids", ["00000001", "00000007"])
    return tmp_path / "shards"


@pytest.mark.parametrize("command", ["remove", "dedup", "find"])
def test_an_output_inside_the_input_is_refused_for_every_command_and_nothing_is_written(shards, tmp_path, command):
    """Case 1: `remove ... ts ts/part2` overwrote ts/part2/00000.tar with the filtered ts/00000.tar."""
    before = tree(shards)
    args = {"remove": ["remove", "--duplicates", str(tmp_path / "ids")], "dedup": ["dedup"], "find": ["find"]}[command]
    assert main([*args, "--workers", "1", str(shards), str(shards / "part2")]) == 1
    assert tree(shards) == before


def test_an_image_folder_with_an_output_inside_is_refused(tmp_path):
    photos = tmp_path / "ph"
    (photos / "sub").mkdir(parents=True)
    for k in range(3):
        (photos / f"{k}.jpg").write_bytes(encode(photo_tiles()[k]))
    (photos / "sub" / "a.jpg").write_bytes(encode(photo_tiles()[5]))
    before = tree(photos)
    with pytest.raises(ValueError, match="lies inside the input"):
        dedup(str(photos), str(photos / "sub"), FindConfig(), executor=ONE)
    assert tree(photos) == before


def test_an_earlier_run_inside_an_image_folder_is_never_read_as_input(tmp_path):
    """Case 2: an earlier dedup's links and report thumbnails inside the input were counted as images."""
    photos = tmp_path / "photos"
    (photos / "dogs").mkdir(parents=True)
    for k in range(4):
        (photos / "dogs" / f"{k}.jpg").write_bytes(encode(photo_tiles()[k]))
    (photos / "dogs" / "copy.jpg").write_bytes((photos / "dogs" / "0.jpg").read_bytes())
    first = dedup(str(photos), str(tmp_path / "d1"), FindConfig(), executor=ONE, link=True)
    os.rename(tmp_path / "d1", photos / "d1")  # now inside the input, as `dedup photos photos/d1` made it
    second = dedup(str(photos), str(tmp_path / "d2"), FindConfig(), executor=ONE, link=True)
    assert (second.images, second.removed) == (first.images, first.removed) == (5, 1)
    assert sorted(os.listdir(tmp_path / "d2" / "shards" / "dogs")) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]


def test_a_find_or_dedup_output_folder_is_refused_as_input(shards, tmp_path):
    dedup(str(shards), str(tmp_path / "run"), FindConfig(), executor=ONE)
    with pytest.raises(ValueError, match="not a dataset; its clean shards are in"):
        dedup(str(tmp_path / "run"), str(tmp_path / "again"), FindConfig(), executor=ONE)
    again = dedup(str(tmp_path / "run" / "shards"), str(tmp_path / "again"), FindConfig(), executor=ONE)
    assert again.removed == 0  # the clean shards, deduplicated again: nothing more to remove


def test_a_folder_of_shards_and_loose_images_is_an_error_naming_both(make_shard, tmp_path):
    """Case 3: one .tar in an image folder silently switched the run to tar mode (99 photos ignored)."""
    make_shard("00000.tar", n=2, folder="mixed")
    for k in range(4):
        (tmp_path / "mixed" / f"photo{k}.jpg").write_bytes(encode(photo_tiles()[k]))
    with pytest.raises(ValueError, match=r"both tar shards \(00000.tar\) and loose image files \(photo0.jpg, "
                                         r"photo1.jpg, photo2.jpg and 1 more\)"):
        dedup(str(tmp_path / "mixed"), str(tmp_path / "out"), FindConfig(), executor=ONE)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("reference", ["shards", "shards/part2", "hard link"])
def test_a_reference_that_shares_images_with_the_input_is_refused(shards, tmp_path, reference):
    """Case 4: `dedup --reference X X` removed everything, exit 0. (Fifth pass: a reference folder holding a
    hard link of an input shard removed all its samples.)"""
    if reference == "hard link":
        (tmp_path / reference).mkdir()
        os.link(next(shards.rglob("*.tar")), tmp_path / reference / "test.tar")
    with pytest.raises(ValueError, match="the reference set and the input share 1 file|share 2 file"):
        find_duplicates(str(shards), str(tmp_path / "out"), FindConfig(), reference=str(tmp_path / reference),
                        executor=ONE)
    assert not (tmp_path / "out" / "hashes").exists()  # refused before any work


def test_a_folder_holding_another_commands_run_is_refused(shards, tmp_path):
    """Case 5: `find big mix; remove --duplicates mix/duplicates big mix` overwrote find's summary.json."""
    find_duplicates(str(shards), str(tmp_path / "mix"), FindConfig(), executor=ONE)
    summary = (tmp_path / "mix" / "summary.json").read_bytes()
    with pytest.raises(ValueError, match="holds the output of an imagesieve find run"):
        remove_duplicates(str(shards), str(tmp_path / "mix"), str(tmp_path / "mix" / "duplicates"), executor=ONE)
    assert (tmp_path / "mix" / "summary.json").read_bytes() == summary
    dedup(str(shards), str(tmp_path / "dd"), FindConfig(), executor=ONE)
    with pytest.raises(ValueError, match="holds the output of an imagesieve dedup run"):
        find_duplicates(str(shards), str(tmp_path / "dd"), FindConfig(), executor=ONE)
    dedup(str(shards), str(tmp_path / "mix"), FindConfig(), executor=ONE)  # dedup takes over a find folder


def test_a_stage_that_adds_an_image_is_refused_not_counted(shards, tmp_path):
    """Case 6: a stage appending an ImageObject was counted as kept (101/101) but never written."""
    pipeline = Pipeline("adds", stages=[FilePartitioningStage(file_paths=str(shards / "part2")), ImageReaderStage(),
                                        AddImageStage(), ImageWriterStage(output_dir=str(tmp_path / "out"))])
    with pytest.raises(Exception, match="has no members read from a shard") as error:
        pipeline.run(ONE)
    assert isinstance(error.value, AccountingError) or "AccountingError" in str(error.value)
    assert not (tmp_path / "out" / "00000.tar").exists()


@pytest.mark.parametrize("how", ["merge", "move"])
def test_a_stage_that_moves_images_between_shards_batches_is_refused(make_shard, tmp_path, how):
    """Sixth hostile pass: a stage with batch_size 2 that merged two shards' batches (or moved an image from one
    to the other) balanced every count, and the writer put one shard's samples into another's output."""
    for k in range(4):
        make_shard(f"{k:05d}.tar", n=3, start=10 * k, folder="four")
    pipeline = Pipeline("regroup", stages=[FilePartitioningStage(file_paths=str(tmp_path / "four")), ImageReaderStage(),
                                           RegroupStage(how=how), ImageWriterStage(output_dir=str(tmp_path / "out"))])
    with pytest.raises(Exception, match=r"00000.tar: its batch holds sample '00000010' read from .*00001.tar|"
                                        r"00001.tar: its batch holds sample '00000000' read from .*00000.tar"):
        pipeline.run(ONE)
    written = {p.name: p for p in (tmp_path / "out").glob("*.tar")} if (tmp_path / "out").exists() else {}
    assert "00001.tar" not in written  # never a shard's output holding another's samples


def test_output_files_keep_the_permission_bits_of_their_source(make_shard, tmp_path):
    """Case 10: a 0600 file in a 0700 folder landed world-readable (0644) in the output."""
    photos = tmp_path / "private"
    photos.mkdir()
    for k in range(2):
        (photos / f"{k}.jpg").write_bytes(encode(photo_tiles()[k]))
    (photos / "id_rsa").write_text("secret")
    for path in photos.iterdir():
        path.chmod(0o600)
    write_ids(tmp_path / "ids", ["1.jpg"])
    remove_duplicates(str(photos), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE)
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir() if p.is_file()
            and p.name != "removed.parquet" and p.name != "summary.json"} == {"0.jpg": 0o600, "id_rsa": 0o600}
    shard = make_shard("00000.tar", n=2, folder="tars")
    os.chmod(shard, 0o640)
    write_ids(tmp_path / "ids2", ["00000001"])
    remove_duplicates(shard, str(tmp_path / "tars_out"), str(tmp_path / "ids2"), executor=ONE)
    assert (tmp_path / "tars_out" / "00000.tar").stat().st_mode & 0o777 == 0o640


def test_no_write_follows_a_symlinked_folder_inside_the_output(tmp_path):
    """Case 11: `out/cats -> /victimdir` received the run's files."""
    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    (photos / "cats" / "a.jpg").write_bytes(encode(photo_tiles()[0]))
    (photos / "cats" / "authorized_keys").write_text("attacker's key")
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "out" / "_imagesieve").mkdir(parents=True)
    (tmp_path / "out" / "_imagesieve" / "run.json").write_text('{"command": "remove"}')  # an earlier run's folder
    (tmp_path / "out" / "cats").symlink_to(victim)
    with pytest.raises(Exception, match="symlink or a file inside the output folder"):
        ids = os.path.dirname(write_ids(tmp_path / "ids", ["cats/a.jpg"]))
        remove_duplicates(str(photos), str(tmp_path / "out"), ids, executor=ONE)
    assert os.listdir(victim) == []


@pytest.mark.parametrize("option", [["--eps", "0.1"], ["--embeddings", "x.parquet"], ["--model", "m.onnx"],
                                    ["--clusters", "3"], ["--min-inliers", "5"],
                                    ["--method", "semantic", "--threshold", "3"], ["--method", "exact", "--flip"],
                                    ["--method", "exact", "--threshold", "3"], ["--method", "exact", "--chaining"]])
def test_an_option_of_another_method_is_an_error(shards, tmp_path, capsys, option):
    """Case 13: `find --eps 0.1` ran pHash and exited 0."""
    with pytest.raises(SystemExit) as exit_:
        main(["find", *option, str(shards), str(tmp_path / "out")])
    assert exit_.value.code == 2 and "does not apply to --method" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["true", '"high"', "[1]", "1" + "0" * 400, "1e999"])
def test_a_keep_column_that_is_not_a_finite_number_is_an_error_naming_the_sample(tmp_path, value):
    """Case 14: a bool, string, list or huge integer gave a raw Arrow or Overflow error naming no sample."""
    import webdataset as wds

    os.makedirs(tmp_path / "shards")
    with wds.TarWriter(str(tmp_path / "shards" / "00000.tar"), encoder=False) as sink:
        for k, score in enumerate(["1", value]):
            sink.write({"__key__": f"s{k}", "jpg": encode(photo_tiles()[k]), "json": f'{{"score": {score}}}'.encode()})
    with pytest.raises(ValueError, match=r"sample 's1'.*'score' must be a (finite )?number"):
        find_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), FindConfig(keep="column:score"), executor=ONE)


def test_a_non_utf8_file_name_is_an_error_naming_the_file(tmp_path):
    """Case 12: a non-UTF-8 name failed the run with 'surrogates not allowed', naming no file."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "ok.jpg").write_bytes(encode(photo_tiles()[0]))
    bad = os.path.join(os.fsencode(photos), b"caf\xe9.jpg")
    with open(bad, "wb") as f:
        f.write(encode(photo_tiles()[1]))
    with pytest.raises(ValueError, match=r"caf\\udce9.jpg.*not valid UTF-8"):
        dedup(str(photos), str(tmp_path / "out"), FindConfig(), executor=ONE)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_refused_before_any_work_and_leave_no_output_folder(shards, tmp_path, capsys):
    """Case 16: --eps 2 was refused after embedding every image; refused runs left OUT/_imagesieve/lock."""
    assert main(["find", "--method", "semantic", "--eps", "2", str(shards), str(tmp_path / "sem")]) == 1
    assert "eps must be in (0, 1)" in capsys.readouterr().err
    assert main(["remove", "--duplicates", str(tmp_path / "no-ids"), str(shards), str(tmp_path / "rm")]) == 1
    (tmp_path / "empty-ids").mkdir()
    assert main(["remove", "--duplicates", str(tmp_path / "empty-ids"), str(shards), str(tmp_path / "rm")]) == 1
    assert not (tmp_path / "sem").exists() and not (tmp_path / "rm").exists()


def test_an_existing_shard_named_like_a_pattern_is_that_shard(make_shard, tmp_path):
    """Pass 7: `x[1].tar` was read as a glob: `x1.tar` beside it was processed instead, exit 0. A path
    that exists as written is that file (as `s{0..1}.tar` already was); a pattern that names nothing is a
    pattern."""
    named = make_shard("x[1].tar", n=4)
    make_shard("x1.tar", n=4, start=4)
    write_ids(tmp_path / "ids", ["00000001", "00000005"])
    summary = remove_duplicates(named, str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE,
                                allow_unmatched_ids=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["_imagesieve", "removed.parquet", "summary.json", "x[1].tar"]
    assert (summary.samples_in, summary.removed) == (4, 1)
    both = remove_duplicates(str(tmp_path / "shards" / "x*.tar"), str(tmp_path / "both"), str(tmp_path / "ids"),
                             executor=ONE)
    assert (both.samples_in, both.removed) == (8, 2)


@pytest.mark.parametrize("option", [["--ray-address", "127.0.0.1:6379"], ["--method", "semantic", "--embeddings-key",
                                                                       "key"]])
def test_an_option_that_needs_another_is_an_error(shards, tmp_path, capsys, option):
    """Case 12: --ray-address without --executor ray ran on this machine; --embeddings-key without
    --embeddings was accepted and ignored."""
    with pytest.raises(SystemExit) as exit_:
        main(["find", *option, str(shards), str(tmp_path / "out")])
    assert exit_.value.code == 2 and re.search(r"needs --executor ray|give --embeddings too", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_an_unreachable_ray_cluster_is_refused_at_once_naming_it(shards, tmp_path, capsys):
    """Case 10: --ray-address of a cluster that does not answer waited for minutes, deaf to SIGTERM."""
    with socket.socket() as closed:  # a port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    assert main(["find", "--executor", "ray", "--ray-address", address, str(shards), str(tmp_path / "out")]) == 1
    assert f"cannot reach the Ray cluster at {address}" in capsys.readouterr().err


def test_more_clusters_than_embeddings_is_refused_before_any_work(tmp_path, capsys):
    """Case 12: --clusters above the number of images was refused only after clustering work began."""
    import webdataset as wds

    shards = tmp_path / "shards"
    shards.mkdir()
    ids = [f"{i:08d}" for i in range(5)]
    with wds.TarWriter(str(shards / "00000.tar"), encoder=False) as sink:
        for key in ids:
            sink.write({"__key__": key, "txt": key.encode()})
    vectors = np.eye(5, 8, dtype=np.float32)
    pq.write_table(pa.table({"id": ids, "embeddings": list(vectors)}), tmp_path / "emb.parquet")
    out = tmp_path / "out"
    assert main(["find", "--method", "semantic", "--embeddings", str(tmp_path / "emb.parquet"), "--clusters", "6",
                 str(shards), str(out)]) == 1
    assert "--clusters 6 is more than the 5 images with embeddings" in capsys.readouterr().err
    assert not (out / "duplicates").exists()


def test_the_workflows_the_readme_names_are_importable_from_the_package():
    """Case 18: `from imagesieve import dedup` returned a subpackage; find_duplicates and remove_duplicates
    were not importable from imagesieve."""
    import imagesieve.matching.near_search  # noqa: F401  (a subpackage imported first must not shadow a name)
    from imagesieve import FindConfig as Config
    from imagesieve import dedup as run_dedup
    from imagesieve import find_duplicates as find
    from imagesieve import remove_duplicates as remove

    assert (run_dedup, find, remove, Config) == (dedup, find_duplicates, remove_duplicates, FindConfig)


def test_a_changed_img2dataset_table_beside_an_unchanged_shard_is_filtered_again(make_shard, tmp_path):
    """Case 9: a rerun kept the output table filtered from the earlier version of 00000.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    make_shard("00000.tar", n=4)
    table = tmp_path / "shards" / "00000.parquet"
    pq.write_table(pa.table({"key": ["00000000", "00000001"], "caption": ["a", "b"]}), table)
    write_ids(tmp_path / "ids", ["00000001"])
    remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE)
    pq.write_table(pa.table({"key": ["00000000", "00000001", "00000002"], "caption": ["a", "b", "c"]}), table)
    again = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE)
    assert again.shards_skipped == 0
    assert pq.read_table(tmp_path / "out" / "00000.parquet").column("key").to_pylist() == ["00000000", "00000002"]


def test_a_corrupt_embeddings_file_is_an_error_naming_it(shards, tmp_path, capsys):
    """Case 15 (part): a corrupt Parquet file of embeddings failed with pyarrow's words and no file name."""
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")
    assert main(["find", "--method", "semantic", "--embeddings", str(tmp_path / "emb"), str(shards),
                 str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'emb' / 'part-0.parquet'}: not a readable Parquet file" in capsys.readouterr().err


def pool_model(path, input_shape=("batch", 3, 32, 32), output_shape=("batch", 3), kind: str = "pool") -> str:
    """A real ONNX model built here: each channel's mean (GlobalAveragePool, Flatten) -> (batch, 3). `kind`:
    "uint8" (a uint8 input, cast to float first), "int" (int64 output), "identity" (the image out),
    "no input" (a constant out), "no output"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.UINT8 if kind == "uint8" else TensorProto.FLOAT,
                                          list(input_shape))
    nodes = [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT) if kind == "uint8" else
             helper.make_node("Identity", ["image"], ["pixels"]),
             helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["mean"], axis=1),
             helper.make_node("Cast", ["mean"], ["embedding"], to=TensorProto.INT64) if kind == "int" else
             helper.make_node("Identity", ["pixels" if kind == "identity" else "mean"], ["embedding"])]
    out_type = TensorProto.INT64 if kind == "int" else TensorProto.FLOAT
    outputs = [] if kind == "no output" else [helper.make_tensor_value_info("embedding", out_type, list(output_shape))]
    inputs, initializer = [image], []
    if kind == "no input":
        nodes = [helper.make_node("Identity", ["constant"], ["embedding"])]
        inputs, initializer = [], [numpy_helper.from_array(np.ones((1, 3), np.float32), "constant")]
    graph = helper.make_graph(nodes, "pool", inputs, outputs, initializer=initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def written(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def read_nothing(self, task):
    raise AssertionError("a shard was read before the model was checked")


def run_nothing(self, *args, **kwargs):
    raise AssertionError("a pipeline (hashing, embedding) started before the model was checked")


UNUSABLE_MODELS = {  # name: (how to make it in tmp_path, what the error says after the file's name)
    "huge input": (lambda p: pool_model(p, (1, 3, 20000, 20000), (1, 3)),
                   r": input 'image' has shape \[1, 3, 20000, 20000\]; a fixed side may be 1 to 1024 pixels"),
    "one channel": (lambda p: pool_model(p, ("batch", 1, 32, 32), ("batch", 1)),
                    r": input 'image' is tensor\(float\) \['batch', 1, 32, 32\]; expected a float"),
    "uint8 input": (lambda p: pool_model(p, kind="uint8"), r": input 'image' is tensor\(uint8\)"),
    "batch fixed at 4": (lambda p: pool_model(p, (4, 3, 32, 32), (4, 3)),
                         r": input 'image' has shape \[4, 3, 32, 32\], its batch size fixed; export it with a "
                         "dynamic batch axis"),
    "not onnx": (lambda p: written(p, b"not a model"), ": the file is not an ONNX model"),
    "empty file": (lambda p: written(p, b""), ": the file is not an ONNX model"),
    "no input": (lambda p: pool_model(p, kind="no input"), ": has 0 inputs"),
    "no output": (lambda p: pool_model(p, kind="no output"), ": has 0 outputs"),
    "image out": (lambda p: pool_model(p, output_shape=("batch", 3, 32, 32), kind="identity"),
                  r": output 'embedding' has shape \['batch', 3, 32, 32\]; expected \(batch, D\)"),
    "integer out": (lambda p: pool_model(p, kind="int"), r": output 'embedding' is tensor\(int64\); expected floats"),
    "folder": (lambda p: p.mkdir() or str(p), ": expected .*config.json"),
}


@pytest.mark.parametrize("method, case", [*(("semantic", case) for case in UNUSABLE_MODELS),
                                          ("copy", "huge input"), ("copy", "not onnx")])
def test_a_model_that_cannot_be_used_is_refused_before_any_work_naming_it(shards, tmp_path, capsys, monkeypatch,
                                                                        method, case):
    """Case 15 (model): a model with a 20000x20000 input was OOM-killed mid-run (three times, retried);
    not ONNX, no input or output, an output not (batch, D): onnxruntime's words, in a worker, mid-run."""
    make, message = UNUSABLE_MODELS[case]
    model = make(tmp_path / "bad.onnx")
    monkeypatch.setattr(Pipeline, "run", run_nothing)
    assert main(["find", "--method", method, "--model", model, str(shards), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert re.search("bad.onnx" + message, err), err
    assert not (tmp_path / "out").exists()


def test_a_pipeline_checks_its_model_before_a_worker_reads_a_shard(shards, tmp_path, monkeypatch):
    """Case 15 (model): ImageEmbeddingStage loaded the model in each worker, after the shards were read."""
    from imagesieve.stages.embedding import ImageEmbeddingStage
    from imagesieve.stages.embedding.onnx_model import ModelShapeError

    model = pool_model(tmp_path / "huge.onnx", (1, 3, 20000, 20000), (1, 3))
    monkeypatch.setattr(ImageReaderStage, "process", read_nothing)
    pipeline = Pipeline("embed", stages=[FilePartitioningStage(file_paths=str(shards)), ImageReaderStage(),
                                         ImageEmbeddingStage(model=model)])
    with pytest.raises(ModelShapeError, match=r"huge.onnx: input 'image' has shape \[1, 3, 20000, 20000\]"):
        pipeline.run(LocalExecutor(2))


def test_a_model_with_a_batch_of_one_runs_one_image_at_a_time(shards, tmp_path):
    """Case 15 (model): a model exported with batch size 1 failed mid-run with onnxruntime's 'Got invalid
    dimensions for input'; now it gives the embeddings a dynamic batch gives."""
    import pyarrow.parquet as pq

    embeddings = {}
    for name, shape in (("one", (1, 3, 32, 32)), ("any", ("batch", 3, 32, 32))):
        model = pool_model(tmp_path / f"{name}.onnx", shape, (shape[0], 3))
        out = tmp_path / name
        assert main(["find", "--quiet", "--method", "semantic", "--flip", "--embedding-batch-size", "4",
                     "--model", model, str(shards), str(out)]) == 0
        embeddings[name] = [pq.read_table(path).column("embeddings").to_pylist()
                            for path in sorted(out.glob("embeddings/**/*.parquet"))]
    assert sum(len(table) for table in embeddings["one"]) == 12
    np.testing.assert_allclose(np.vstack(embeddings["one"]), np.vstack(embeddings["any"]), atol=1e-6)


@pytest.mark.parametrize("command", ["remove", "dedup", "find"])
def test_a_folder_of_files_no_run_wrote_is_refused_as_output_and_left_as_it_was(shards, tmp_path, command):
    """Hostile pass 2, case 1: another dataset given as OUT had its 00000.tar..00003.tar replaced."""
    other = tmp_path / "other"
    (other / "shards").mkdir(parents=True)
    for name in ("00000.tar", "summary.json", "shards/00000.tar"):
        (other / name).write_text(f"the user's {name}")
    before = tree(other)
    args = {"remove": ["remove", "--duplicates", str(tmp_path / "ids")], "dedup": ["dedup"], "find": ["find"]}[command]
    assert main([*args, "--workers", "1", str(shards), str(other)]) == 1
    assert tree(other) == before and sorted(os.listdir(other)) == ["00000.tar", "shards", "summary.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, "--workers", "1", "--quiet", str(shards), str(empty)]) == 0  # an empty folder is fine


def test_dedup_never_writes_through_a_symlinked_shards_folder(shards, tmp_path, capsys):
    """Hostile pass 2, case 2: `out/shards -> ../victim` received the clean shards over the user's file."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "00000.tar").write_text("precious")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "shards").symlink_to(victim)
    assert main(["dedup", "--workers", "1", str(shards), str(tmp_path / "out")]) == 1
    assert "is a symlink" in capsys.readouterr().err
    assert tree(victim) == {"00000.tar": b"precious"}


def test_a_summary_json_that_is_not_imagesieves_is_named_in_the_error(shards, tmp_path, capsys):
    """Hostile pass 2, case 10: `Expecting value: line 1 column 1 (char 0)`, naming no file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("notes")
    assert main(["dedup", "--workers", "1", str(shards), str(out)]) == 1
    assert str(out / "summary.json") in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["summary.json"]  # nothing of ours left behind


@pytest.mark.parametrize("command", ["remove", "dedup", "find"])
@pytest.mark.parametrize("how", ["symlinked folder", "hard link"])
def test_one_shard_under_two_names_is_refused_for_every_command_naming_both(shards, tmp_path, capsys, command, how):
    """`remove` of a list naming shards/00000.tar and dlink/00000.tar wrote the shard twice (200 samples in)."""
    if how == "symlinked folder":
        (tmp_path / "dlink").symlink_to(shards)
        other = tmp_path / "dlink" / "00000.tar"
    else:
        other = tmp_path / "hard.tar"
        os.link(shards / "00000.tar", other)
    listing = tmp_path / "twice.txt"
    listing.write_text(f"{shards / '00000.tar'}\n{other}\n")
    args = {"remove": ["remove", "--duplicates", str(tmp_path / "ids")], "dedup": ["dedup"], "find": ["find"]}[command]
    assert main([*args, "--workers", "1", str(listing), str(tmp_path / "tw")]) == 1
    assert f"{shards / '00000.tar'} and {other} are the same file under two names" in capsys.readouterr().err
    assert not (tmp_path / "tw").exists()


def _photos(folder, count: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        (folder / f"{k}.jpg").write_bytes(encode(photo_tiles()[k]))


def test_a_linked_output_of_an_input_edited_in_place_is_replaced_and_never_left_as_removed(tmp_path):
    """A --link output shares its inode with the input: editing the input in place changed the output too,
    the rerun took it for a file the user replaced, and kept it while listing it as removed."""
    photos, out = tmp_path / "imgs", tmp_path / "lo"
    _photos(photos)
    dedup(str(photos), str(out), FindConfig(), executor=ONE, link=True)
    with open(photos / "3.jpg", "wb") as f:  # in place: same inode, another size
        f.write((photos / "0.jpg").read_bytes())
    dedup(str(photos), str(out), FindConfig(), executor=ONE, link=True)
    removed = pq.read_table(out / "removed.parquet").column("id").to_pylist()
    assert removed == ["3.jpg"] and not (out / "shards" / "3.jpg").exists()
    assert (photos / "3.jpg").read_bytes() == (photos / "0.jpg").read_bytes()  # the input is untouched
    # a file that is not ours where a removed image was: an error naming it, never a silent disagreement
    (out / "shards" / "3.jpg").write_bytes(b"the user's own file")
    os.utime(photos / "1.jpg")  # a changed chunk, redone
    with pytest.raises(AccountingError, match="3.jpg is listed as removed but a file by that name is still"):
        dedup(str(photos), str(out), FindConfig(), executor=ONE, link=True)
    assert (out / "shards" / "3.jpg").read_bytes() == b"the user's own file"


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o7777


def test_outputs_are_never_more_open_than_their_input_or_the_umask(make_shard, tmp_path):
    """A 0700 input folder became 0755 in OUT/shards, OUT/hashes and the report's thumbnails; under umask 077
    copies kept their input's 0644; a setuid input stayed setuid."""
    make_shard("00000.tar", n=4, folder="tars/sub")
    top = make_shard("00001.tar", keys=["a", "b", "c"], folder="tars",
                     images=[photo_tiles()[k] for k in (0, 5, 6)])  # "a" repeats 00000000: a group
    os.chmod(top, 0o4755)
    for folder in (tmp_path / "tars", tmp_path / "tars" / "sub"):
        folder.chmod(0o700)
    old = os.umask(0o022)
    try:
        dedup(str(tmp_path / "tars"), str(tmp_path / "out"), FindConfig(), executor=ONE)
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert {p: _mode(out / p) for p in ("shards", "shards/sub", "hashes", "hashes/sub", "report/thumbs")} == \
        dict.fromkeys(("shards", "shards/sub", "hashes", "hashes/sub", "report/thumbs"), 0o700)
    assert os.listdir(out / "report" / "thumbs")
    assert _mode(out / "shards" / "00001.tar") == 0o755  # no setuid
    photos = tmp_path / "photos"
    _photos(photos / "sub", 3)
    photos.chmod(0o750)
    write_ids(tmp_path / "ids", ["sub/1.jpg"])
    old = os.umask(0o077)
    try:
        remove_duplicates(str(photos), str(tmp_path / "po"), str(tmp_path / "ids"), executor=ONE)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "po") == 0o700 and _mode(tmp_path / "po" / "sub") == 0o700
    assert {p.name: _mode(p) for p in (tmp_path / "po" / "sub").iterdir()} == {"0.jpg": 0o600, "2.jpg": 0o600}


def test_an_input_of_only_empty_shards_is_a_clear_error(tmp_path):
    """Fifth hostile pass: shards that are all empty tars (img2dataset's, when every download failed) failed
    with a raw 'Field "width" does not exist in schema'."""
    import tarfile

    (tmp_path / "empty").mkdir()
    for name in ("00000.tar", "00001.tar"):
        tarfile.open(tmp_path / "empty" / name, "w").close()
    for run in (find_duplicates, dedup):
        with pytest.raises(ValueError, match=r"holds no samples: every shard is an empty tar \(00000.tar, 00001.tar\)"):
            run(str(tmp_path / "empty"), str(tmp_path / run.__name__), FindConfig(), executor=ONE)


def test_names_near_the_file_systems_limit(make_shard, tmp_path):
    """Fifth hostile pass: a legal 252-byte shard name, or a 244-byte image name, failed mid-run with a raw
    'File name too long' (the temp name `.NAME.imagesieve-tmp-PID`, or `NAME.parquet` beside the output), after
    other files were written. An image's temp name is now its name's hash; a shard whose records cannot be
    named is refused before anything is written, naming it."""
    long_shard = "x" * 248 + ".tar"
    make_shard(long_shard, n=3, folder="long")
    with pytest.raises(ValueError, match=f"{long_shard}: the name is too long for the records"):
        remove_duplicates(str(tmp_path / "long"), str(tmp_path / "out"),
                          os.path.dirname(write_ids(tmp_path / "ids", ["x"])), executor=ONE)
    assert not (tmp_path / "out").exists()

    photos = tmp_path / "photos"
    photos.mkdir()
    long_image = "y" * 240 + ".jpg"
    (photos / long_image).write_bytes(encode(photo_tiles()[0], "jpeg"))
    (photos / "copy.jpg").write_bytes((photos / long_image).read_bytes())
    summary = dedup(str(photos), str(tmp_path / "folder_out"), FindConfig(method="exact"), executor=ONE)
    assert (summary.images, summary.removed) == (2, 1)
    assert sorted(os.listdir(tmp_path / "folder_out" / "shards")) == ["_imagesieve", "copy.jpg", "summary.json"]


def test_what_a_run_derives_from_private_shards_is_closed_to_others(shards, tmp_path):
    """Fifth hostile pass: with 0600 shards in a 0755 folder the output shards were 0600, but the report's
    thumbnails and captions, hash tables and ID lists were 0644 in a 0755 OUT: readable by every user. OUT
    is now closed to each class of users that some input file is closed to."""
    old = os.umask(0o022)
    try:
        dedup(str(shards), str(tmp_path / "open"), FindConfig(), executor=ONE)
        assert _mode(tmp_path / "open") == 0o755  # readable input: nothing narrowed
        next(shards.rglob("*.tar")).chmod(0o640)  # one shard closed to others, readable by the group
        dedup(str(shards), str(tmp_path / "private"), FindConfig(), executor=ONE)
        assert _mode(tmp_path / "private") == 0o750
        assert (tmp_path / "private" / "report" / "index.html").exists()
    finally:
        os.umask(old)


def test_an_empty_records_folder_or_a_damaged_table_of_our_own_loses_nothing(shards, tmp_path):
    """Sixth hostile pass: an empty folder named `_imagesieve` made its whole subtree be taken for an earlier run
    and left out (100 samples in neither output nor removed list); a 0-byte hash table of our own (a power cut)
    failed every rerun with an error naming no file."""
    part = next(p for p in shards.iterdir() if p.is_dir())
    (part / "_imagesieve").mkdir()
    shard_files = list(shards.rglob("*.tar"))
    first = dedup(str(shards), str(tmp_path / "out"), FindConfig(), executor=ONE)
    written = list((tmp_path / "out" / "shards").rglob("*.tar"))
    assert len(written) == len(shard_files)  # nothing left out for an empty folder of that name

    table = next((tmp_path / "out" / "hashes").rglob("*.parquet"))
    table.write_bytes(b"")
    again = dedup(str(shards), str(tmp_path / "out"), FindConfig(), executor=ONE)
    assert (again.images, again.removed) == (first.images, first.removed) and table.stat().st_size > 0
    groups = next((tmp_path / "out" / "groups").glob("*.parquet"))
    groups.write_bytes(b"")
    with pytest.raises(ValueError, match=r"part-00000.parquet: cannot be read"):
        write_report(str(tmp_path / "out"), executor=ONE)


def test_a_file_where_a_folder_belongs_is_refused_before_any_work(shards, tmp_path):
    """Sixth hostile pass: OUT naming an existing file gave a raw errno, and a --cache-dir naming a file failed
    only after the whole find phase (hashes, groups and summary written)."""
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(ValueError, match="a-file exists and is a file"):
        dedup(str(shards), str(tmp_path / "a-file"), FindConfig(), executor=ONE)
    with pytest.raises(ValueError, match="the cache folder .*a-file exists and is not a folder"):
        dedup(str(shards), str(tmp_path / "out"), FindConfig(), executor=ONE, cache_dir=str(tmp_path / "a-file"))
    assert not (tmp_path / "out").exists() and (tmp_path / "a-file").read_text() == "mine"


def test_a_users_folder_named_like_our_records_is_refused_not_dropped(make_shard, tmp_path):
    """Pass 10: `ds/_imagesieve/00001.tar` (a user's folder, no run's lock or record in it) was left out of
    the input without a word: 100 of 200 samples read, exit 0. Refused, naming it, for shards and images."""
    make_shard("00000.tar", n=4, folder="ds")
    make_shard("00001.tar", n=4, start=4, folder="ds/_imagesieve")
    with pytest.raises(ValueError, match=r"_imagesieve: a folder of this name holds imagesieve's records, but"):
        find_duplicates(str(tmp_path / "ds"), str(tmp_path / "out"), FindConfig(method="exact"), executor=ONE)
    photos = tmp_path / "photos" / "sub" / "_imagesieve"
    photos.mkdir(parents=True)
    (photos / "a.png").write_bytes(encode(photo_tiles()[0], "png"))
    (tmp_path / "photos" / "b.png").write_bytes(encode(photo_tiles()[1], "png"))
    with pytest.raises(ValueError, match="holds no imagesieve run, so its files would be left out"):
        find_duplicates(str(tmp_path / "photos"), str(tmp_path / "out2"), FindConfig(method="exact"), executor=ONE)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
