"""ImageEmbeddingStage on real photo shards: the default model, a user's ONNX model (built here), the
Parquet writer and its reuse rule, teardown."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper

from imagesieve.stages.embedding import EmbeddingWriterStage, ImageEmbeddingStage
from imagesieve.stages.embedding.embedding_writer import embedding_table_path, is_current
from imagesieve.stages.embedding.onnx_model import DEFAULT_MODEL, ModelShapeError, model_identity
from imagesieve.stages.io import ImageReaderStage
from imagesieve.storage.runfolder import shard_fingerprint


def read(shard: str):
    return ImageReaderStage().read_shard(shard, os.path.basename(shard))


def tiny_model(path, input_shape=("batch", 3, 16, 16), output_dim: int | None = 8, outputs: int = 1) -> str:
    """A real ONNX model: flatten a (3, 16, 16) image, multiply by a fixed matrix -> (batch, 8)."""
    weights = np.random.default_rng(0).normal(size=(int(np.prod(input_shape[1:])), 8)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["embedding"])]
    out_shape = ["batch", output_dim] if output_dim else ["batch", 8, 1, 1, 1]
    graph_outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, out_shape)]
    if outputs == 2:
        nodes.append(helper.make_node("Identity", ["embedding"], ["copy"]))
        graph_outputs.append(helper.make_tensor_value_info("copy", TensorProto.FLOAT, out_shape))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            list(input_shape))],
                              graph_outputs, initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_default_model_gives_unit_1024d_embeddings_in_minibatches(make_shard):
    shard = make_shard(n=7)
    stage = ImageEmbeddingStage(model_inference_batch_size=3)
    stage.setup()
    batch = stage.process(read(shard))
    vectors = np.stack([image.embedding for image in batch.data])
    assert vectors.shape == (7, 1024) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    whole = ImageEmbeddingStage(model_inference_batch_size=32).process(read(shard))
    np.testing.assert_allclose(np.stack([i.embedding for i in whole.data]), vectors, atol=1e-5)
    assert all(image.metadata["width"] == 64 and image.metadata["file_size"] > 0 for image in batch.data)


def test_decoded_image_data_is_used_and_can_be_dropped(make_shard, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    from_bytes = ImageEmbeddingStage(model=model).process(read(make_shard(n=2)))
    batch = read(make_shard(n=2))
    for image in batch.data:
        image.decode()
    decoded = ImageEmbeddingStage(model=model, remove_image_data=True).process(batch)
    for a, b in zip(from_bytes.data, decoded.data, strict=True):
        assert float(a.embedding @ b.embedding) > 0.99  # bytes are decoded at reduced size (JPEG draft)
        assert not b.is_decoded  # the pixels were released (read again, they would be decoded anew)


def test_teardown_releases_the_model(make_shard):
    stage = ImageEmbeddingStage()
    assert not stage.loaded  # the constructor loads nothing
    stage.setup()
    assert stage.loaded
    stage.teardown()
    assert not stage.loaded


def test_user_onnx_model(make_shard, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    stage = ImageEmbeddingStage(model=model, model_inference_batch_size=2)
    batch = stage.process(read(make_shard(n=3)))
    vectors = np.stack([image.embedding for image in batch.data])
    assert vectors.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert model_identity(model).startswith("sha256:")


@pytest.mark.parametrize("kwargs, message", [
    ({"input_shape": ("batch", 5, 16, 16)}, "input 'image' is tensor\\(float\\) \\['batch', 5, 16, 16\\]"),
    ({"input_shape": ("batch", 3, 16)}, "input .image. is .*; expected a float \\(batch, 3, H, W\\)"),
    ({"output_dim": None}, "output 'embedding' has shape"),
    ({"outputs": 2}, "has 2 outputs"),
    ({"input_shape": (2, 3, 16, 16)}, "input .image. has shape \\[2, 3, 16, 16\\], its batch size fixed; export it "
                                      "with a dynamic batch axis"),
])
def test_onnx_model_that_does_not_fit_is_refused_naming_the_file(tmp_path, kwargs, message):
    model = tiny_model(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(ModelShapeError, match=f"bad.onnx: {message}"):
        ImageEmbeddingStage(model=model).setup()


def test_a_model_with_a_batch_of_one_runs_one_image_at_a_time(make_shard, tmp_path):
    """onnxruntime refused every batch but the first image's ('Got invalid dimensions')."""
    shard = make_shard(n=7)
    one, dynamic = (np.stack([image.embedding for image in ImageEmbeddingStage(
        model=tiny_model(tmp_path / name, input_shape=shape), flip=True, model_inference_batch_size=3
    ).process(read(shard)).data]) for name, shape in (("one.onnx", (1, 3, 16, 16)), ("any.onnx", ("b", 3, 16, 16))))
    assert one.shape == (7, 8)
    np.testing.assert_allclose(one, dynamic, atol=1e-5)


def test_an_input_size_over_the_bound_is_refused():
    with pytest.raises(ValueError, match="input_size must be in 1..1024, got 20000"):
        ImageEmbeddingStage(input_size=20000)


def test_writer_records_shard_and_model_and_rerun_rule(make_shard, tmp_path):
    shard = make_shard(n=4)
    model_id = model_identity(DEFAULT_MODEL)
    stage = ImageEmbeddingStage(model=tiny_model(tmp_path / "tiny.onnx"))
    batch = stage.process(read(shard))
    out = tmp_path / "emb"
    EmbeddingWriterStage(embeddings_dir=str(out), model_id=model_id).process(batch)
    path = embedding_table_path(str(out), os.path.basename(shard))
    table = pq.read_table(path)
    assert table.column("id").to_pylist() == [image.image_id for image in batch.data]
    assert table.schema.field("embeddings").type.value_type == pa.float32()  # list<float>, as Curator writes
    assert is_current(path, shard_fingerprint(shard), model_id)
    assert not is_current(path, shard_fingerprint(shard), "sha256:another model")
    assert not is_current(path, shard_fingerprint(shard), model_id, {"json.score"})
    os.utime(shard, ns=(1, 1))  # the shard changed
    assert not is_current(path, shard_fingerprint(shard), model_id)


def test_unreadable_image_fails_or_is_recorded(tmp_path):
    from conftest import encode, photo_tiles

    from imagesieve.workflows.sample_data import write_shard

    shard = str(tmp_path / "bad.tar")
    write_shard(shard, [{"jpg": encode(photo_tiles()[0])}, {"jpg": b"not an image"}], ["good", "broken"])
    batch = read(shard)
    with pytest.raises(ValueError, match="bad.tar: sample 'broken'"):
        ImageEmbeddingStage(model=tiny_model(tmp_path / "t.onnx")).process(batch)
    skipped = ImageEmbeddingStage(model=tiny_model(tmp_path / "t.onnx"), on_error="skip").process(batch)
    assert skipped.data[0].embedding is not None and skipped.data[1].embedding is None
    assert "error" in skipped.data[1].metadata


def test_the_cuda_provider_is_taken_when_onnxruntime_has_it(monkeypatch):
    import onnxruntime

    from imagesieve.stages.embedding.onnx_model import providers

    class WithCuda:
        @staticmethod
        def get_available_providers() -> list[str]:
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.delenv("IMAGESIEVE_ONNX_PROVIDER", raising=False)
    assert providers(WithCuda) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("IMAGESIEVE_ONNX_PROVIDER", "cpu")
    assert providers(WithCuda) == ["CPUExecutionProvider"]
    monkeypatch.delenv("IMAGESIEVE_ONNX_PROVIDER")
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else \
        "CPUExecutionProvider"
    assert providers(onnxruntime)[0] == expected
