"""Turn a shipped runtime graph whose encoder weights are references into a file ONNX Runtime can load, once.

The default model's ``onnx/model.onnx`` holds Whisper's front-end and the probe, but not the encoder's
20M weights: each encoder initializer is ONNX external data named ``<backbone>:<parameter>`` (see
:mod:`emovox.export.runtime_build`). Here those references are filled from the pinned Whisper packages
(:mod:`emovox.pretrained.whisper_weights`, NumPy only), the graph is optimised by ONNX Runtime itself (constant
folding of the weight transposes) and, where the runtime manifest asks for it, dynamically quantised
to int8 (``onnxruntime.quantization.quantize_dynamic``, the encoder's matrix products only). The result
is written to the cache folder (``$EMOVOX_CACHE_DIR/onnx``, default ``~/.cache/emovox/onnx``), named by
a hash of the graph, the weights' files and the onnxruntime version, so later starts load it directly.
When the cache cannot be written the model is built in a temporary folder for this process only.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emovox.atomic import move_into_place
from emovox.defaults import cache_env
from emovox.errors import ModelLoadError

CACHE_SUBDIR = "onnx"
#: The rule a quantised graph ships under (``runtime.json``'s ``quantization`` other than ``"none"``): its top-1
#: answers agree with the float32 graph's on at least this share of the validation clips ...
MIN_QUANTISED_AGREEMENT = 0.99
#: ... and its UAR there is within this of float32's (0.5 point).
MAX_QUANTISED_UAR_CHANGE = 0.005


def quantised_graph_ships(agreement: float, uar_float: float | None = None, uar_quantised: float | None = None) -> bool:
    """Whether a quantised graph may ship instead of its float32 graph: top-1 agreement with float32 of at least
    :data:`MIN_QUANTISED_AGREEMENT` and, where both UARs are given, a UAR within :data:`MAX_QUANTISED_UAR_CHANGE`
    (``tests/runtime/test_onnx_runtime.py`` holds the shipped manifest to it; ``benchmarks.onnx_runtime quant``
    and ``benchmarks.int8_static`` measure it on the validation speakers)."""
    uar_ok = uar_float is None or uar_quantised is None or abs(uar_quantised - uar_float) <= MAX_QUANTISED_UAR_CHANGE
    return agreement >= MIN_QUANTISED_AGREEMENT and uar_ok


def cache_root() -> Path:
    return (cache_env() or Path("~/.cache/emovox").expanduser()) / CACHE_SUBDIR


def _weights_files(backbone: str) -> list[Path]:
    from emovox.pretrained.whisper_weights import PACKAGED, packaged_files

    if backbone not in PACKAGED:
        raise ModelLoadError(f"the runtime graph refers to encoder weights {backbone!r}, which are not a packaged "
                             f"checkpoint ({', '.join(PACKAGED)})")
    parts, _config = packaged_files(backbone)
    return parts


def cache_key(graph: Path, backbone: str, quantization: str) -> str:
    import onnxruntime

    h = hashlib.sha256()
    h.update(graph.read_bytes())
    for p in _weights_files(backbone):
        st = p.stat()
        h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(f"{quantization}|onnxruntime {onnxruntime.__version__}".encode())
    return h.hexdigest()[:20]


def materialise(graph: Path, manifest: dict[str, Any]) -> Path:
    """A loadable ONNX file for ``graph`` (``<model>/onnx/model.onnx``): the cached one, or built now."""
    info = manifest.get("external_weights") or {}
    backbone, quantization = str(info.get("backbone", "")), str(manifest.get("quantization", "none"))
    key = cache_key(graph, backbone, quantization)
    target = cache_root() / f"{graph.parent.parent.name}-{key}.onnx"
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out_dir = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
        persistent = True
    except OSError:
        out_dir, persistent = Path(tempfile.mkdtemp(prefix="emovox-onnx-")), False
    try:
        built = _build(graph, backbone, quantization, out_dir)
        if not persistent:
            return built
        move_into_place(built, target)
        return target
    finally:
        if persistent:  # the intermediate files (or everything, after a failure)
            shutil.rmtree(out_dir, ignore_errors=True)


def _build(graph: Path, backbone: str, quantization: str, out_dir: Path) -> Path:
    filled = out_dir / "filled.onnx"
    _fill(graph, backbone, filled)
    folded = out_dir / "folded.onnx"
    _optimise(filled, folded)
    filled.unlink()
    if quantization == "none":
        return folded
    if quantization != "int8":
        raise ModelLoadError(f"{graph}: unknown quantization {quantization!r} in runtime.json")
    quantised = out_dir / "int8.onnx"
    _quantise(folded, quantised)
    folded.unlink()
    return quantised


def fill_external_weights(graph: Path, out: Path, lookup: Callable[[str, str], Any], *,
                          error: type[Exception] = ModelLoadError, missing: str = "which no weights hold") -> None:
    """Save ``graph`` as ``out`` with every initializer stored as a reference ``location = "<source>:<name>"``
    replaced by ``lookup(source, name)`` (a NumPy array, or None when there is none: ``error`` saying ``missing``);
    each array's shape and dtype must be the initializer's. The Whisper default's and the text models' graphs
    ship without their weights this way."""
    import numpy as np
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(graph), load_external_data=False)
    for t in model.graph.initializer:
        if not uses_external_data(t):
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        source, _, name = loc.partition(":")
        arr = lookup(source, name)
        if arr is None:
            raise error(f"{graph}: initializer {t.name!r} refers to {loc!r}, {missing}")
        want = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        if tuple(arr.shape) != tuple(t.dims) or arr.dtype != want:
            raise error(f"{graph}: {t.name!r} expects {want} {tuple(t.dims)}, the weights hold "
                        f"{arr.dtype} {tuple(arr.shape)}")
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
        t.raw_data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    onnx.save_model(model, str(out), save_as_external_data=False)


def _fill(graph: Path, backbone: str, out: Path) -> None:
    """Replace every ``<backbone>:<name>`` reference with the packaged weights."""
    from emovox.pretrained.whisper_weights import ct2_encoder_arrays

    _dims, arrays = ct2_encoder_arrays(_weights_files(backbone))
    fill_external_weights(graph, out, lambda source, name: arrays.get(name) if source == backbone else None,
                          missing=f"which {backbone} does not hold")


def _optimise(src: Path, dst: Path) -> None:
    """ONNX Runtime's basic optimisations, saved (constant folding: weights become plain MatMul inputs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def _quantise(src: Path, dst: Path) -> None:
    """Dynamic int8 of the encoder's weight matrix products; the front-end and the probe stay float32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    weights = {t.name for t in model.graph.initializer}
    nodes = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
             and n.name.startswith("/whisper_encoder/") and any(i in weights for i in n.input)]
    if not nodes:
        raise ModelLoadError(f"{src}: no encoder matrix products to quantise")
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=nodes,
                     op_types_to_quantize=["MatMul", "Gemm"])

