"""ONNX: one self-contained file per graph, dynamic batch and time axes, metadata for runtimes.

The graph is captured with ``torch.onnx.export(dynamo=False)`` (PyTorch's TorchScript-based
exporter), the same trace the TorchScript and Core ML exports use. PyTorch 2.9+ marks that
exporter deprecated in favour of the ``torch.export``-based one, which needs the ``onnxscript``
package and converts recurrent layers and data-dependent shapes less completely; when the old
exporter is gone, this module is the one place to switch.

Metadata (``metadata_props``): ``emovox`` holds a JSON object (labels, temperature, sample rate,
input kind, tensor names, opset, normalisation in graph, streaming state); ``labels``,
``temperature``, ``sample_rate_hz`` and ``opset`` are also stored as plain keys for simple readers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovox.export.spec import GraphSpec

DEFAULT_OPSET = 17


def write_onnx(spec: GraphSpec, path: Path, *, opset: int, metadata: dict[str, Any], constant_folding: bool = True
               ) -> None:
    """``constant_folding=False`` keeps parameters as named initializers (the runtime folds them when it loads)."""
    import onnx

    tmp = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer chatter
        try:
            torch.onnx.export(
                spec.module, spec.example, str(tmp), dynamo=False, opset_version=opset,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes(), do_constant_folding=constant_folding,
            )
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
            raise RuntimeError(f"ONNX export of the {spec.kind}-input graph failed at opset {opset}: "
                               f"{str(e).splitlines()[0][:400]}") from e
    model = onnx.load(str(tmp))
    tmp.unlink()
    model.doc_string = metadata.get("description", "")
    model.producer_name = "emovox"
    model.producer_version = str(metadata.get("emovox_version", ""))
    props = {
        "emovox": json.dumps(metadata, separators=(",", ":")),
        "labels": json.dumps(metadata["labels"]),
        "temperature": repr(float(metadata["temperature"])),
        "sample_rate_hz": str(metadata["sample_rate_hz"]),
        "opset": str(opset),
        "input_kind": spec.kind,
    }
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    for t, vi in zip([*spec.inputs, *spec.outputs], [*model.graph.input, *model.graph.output]):
        vi.doc_string = t.description
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), save_as_external_data=False)


def external_data_files(path: Path) -> list[str]:
    """Names of external data files a model refers to (empty for a self-contained file)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    found = []
    for t in model.graph.initializer:
        if uses_external_data(t):
            found += [e.value for e in t.external_data if e.key == "location"]
    return found


class OnnxRunner:
    """Runs an exported graph in onnxruntime: ``runner(*arrays) -> list of arrays``."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # checks run small batches; do not compete for cores
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        feed = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.input_names, arrays)}
        return self.session.run(None, feed)


def quantize_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic int8 quantisation of the model part only (weights int8, activations quantised at run time).

    The front-end (STFT convolution, mel matmul) and the normalisation stay float32: quantising
    the power spectrum, whose values span 1e-10 .. 1e3, would flatten most of it to the log floor.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    ops = ("Conv", "MatMul", "Gemm", "LSTM", "GRU")
    nodes = [n.name for n in model.graph.node if n.name.startswith("/model/") and n.op_type in ops]
    if not nodes:
        raise ValueError(f"{src.name}: no model layers to quantise")
    pre = dst.with_suffix(".pre.onnx")
    try:
        # onnxruntime's recommended pre-processing (shape inference; no graph rewrites, so node names stay)
        quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                         op_types_to_quantize=list(ops), extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        pre.unlink(missing_ok=True)
    q = onnx.load(str(dst))
    # keep the metadata (quantize_dynamic copies it, but make sure) and say what was done
    meta = {p.key: p.value for p in model.metadata_props}
    meta["quantization"] = "dynamic int8 (onnxruntime.quantization.quantize_dynamic), model layers only"
    del q.metadata_props[:]
    for k, v in meta.items():
        q.metadata_props.add(key=k, value=v)
    onnx.save_model(q, str(dst), save_as_external_data=False)
    return {"quantized_nodes": len(nodes)}
