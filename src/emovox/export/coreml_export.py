"""Core ML: a neural network (``.mlmodel``) and an ML program (``.mlpackage``) per graph.

Both are converted by coremltools from the graph traced with ``torch.jit.trace`` (coremltools'
TorchScript frontend; its ``torch.export`` frontend is newer and covers fewer ops). Conversion runs
on Linux; running a Core ML model needs macOS, so on Linux the export checks the written spec (names,
shapes, types) and leaves numbers to the ONNX and TorchScript checks of the same trace. On macOS the
exporter also runs both files and compares them with PyTorch.

- ``.mlmodel`` (``convert_to="neuralnetwork"``): the old format, runs on iOS 13+/macOS 10.15+ (the
  converter picks the lowest specification version the layers allow; see ``specificationVersion``).
  float32 weights and compute.
- ``.mlpackage`` (``convert_to="mlprogram"``, ``compute_precision=FLOAT32``): iOS 15+/macOS 12+.

The Core ML graphs take one clip (batch 1): the Core ML mobile CNN's ``[1, 64, 100]``. The waveform input has a
flexible length (``RangeDim``) from one hop up to ``coreml_max_seconds``; the streaming model takes
one frame ``[1, 1, n_features]`` and its state.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovox.export.spec import GraphSpec

FLAVOURS = ("neuralnetwork", "mlprogram")
EXTENSIONS = {"neuralnetwork": ".mlmodel", "mlprogram": ".mlpackage"}


def _ct():
    import coremltools as ct

    return ct


def trace(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter; the exports are checked numerically instead
        with torch.no_grad():
            return torch.jit.trace(module, example, check_trace=False)


@contextlib.contextmanager
def _numpy2_int_cast():
    """Work around coremltools 9.0 under NumPy >= 2.4 for the duration of one conversion.

    The converter's ``int``/``bool`` ops turn a folded size like ``c * f`` (a 1-element array) into
    a Python number with ``int(array)``, which NumPy 2.4 refuses for arrays of rank > 0 (a traced
    ``x.reshape(b, c * f, t)`` hits it). This registers fixed versions through coremltools' public
    ``register_torch_op(override=True)`` and puts the originals back afterwards. No-op on NumPy
    versions where ``int(np.array([1]))`` works.
    """
    try:
        int(np.array([1]))
        yield
        return
    except TypeError:
        pass
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops, register_torch_op

    def fixed(original, cast):
        def convert(context, node):
            x = ops._get_inputs(context, node, expected=1)[0]
            if x.can_be_folded_to_const() and np.ndim(x.val) > 0 and np.size(x.val) == 1:
                context.add(mb.const(val=cast(np.asarray(x.val).reshape(())), name=node.name), node.name)
            else:
                original(context, node)

        return convert

    def _emovox_int(context, node):
        fixed(ops._int, int)(context, node)

    def _emovox_bool(context, node):
        fixed(ops._bool, bool)(context, node)

    register_torch_op(_emovox_int, torch_alias=["int"], override=True)
    register_torch_op(_emovox_bool, torch_alias=["bool"], override=True)
    try:
        yield
    finally:
        register_torch_op(ops._int, torch_alias=["int"], override=True)
        register_torch_op(ops._bool, torch_alias=["bool"], override=True)


def _shape(ct, dims: list[Any]):
    out = []
    for d in dims:
        if isinstance(d, tuple) and d and d[0] == "range":
            _, lo, hi, default = d
            out.append(ct.RangeDim(lower_bound=int(lo), upper_bound=int(hi), default=int(default)))
        else:
            out.append(int(d))
    return ct.Shape(shape=out)


def write_coreml(spec: GraphSpec, out_dir: Path, *, flavours: tuple[str, ...], metadata: dict[str, Any],
                 author: str, license_text: str, description: str) -> dict[str, dict[str, Any]]:
    """Write each flavour; returns ``{flavour: {"file", "specification_version", ...}}``."""
    ct = _ct()
    traced = trace(spec.coreml_module, spec.coreml_example)
    inputs = [ct.TensorType(name=t.name, shape=_shape(ct, t.coreml_shape), dtype=np.float32) for t in spec.inputs]
    outputs = [ct.TensorType(name=t.name) for t in spec.outputs]
    written: dict[str, dict[str, Any]] = {}
    for flavour in flavours:
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown Core ML flavour {flavour!r}; available: {', '.join(FLAVOURS)}")
        kwargs: dict[str, Any] = {"convert_to": flavour}
        if flavour == "mlprogram":
            kwargs.update(compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS15)
        try:
            with warnings.catch_warnings(), _numpy2_int_cast():
                warnings.simplefilter("ignore")
                ml = ct.convert(traced, inputs=inputs, outputs=outputs, skip_model_load=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - the converter raises many kinds
            hint = (" (the neural-network format lacks some newer ops; export only the ML program with "
                    "--coreml-flavour mlprogram)" if flavour == "neuralnetwork" else "")
            raise RuntimeError(f"Core ML {flavour} conversion of the {spec.kind}-input graph failed: "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:400]}{hint}") from e
        ml = _finish(ct, ml, spec, metadata=metadata, author=author, license_text=license_text,
                     description=description)
        path = out_dir / f"{spec.coreml_stem}{EXTENSIONS[flavour]}"
        ml.save(str(path))
        written[flavour] = {"file": path.name, "specification_version": ml.get_spec().specificationVersion}
    return written


def _finish(ct, ml, spec: GraphSpec, *, metadata, author, license_text, description):
    """Set fixed output shapes, float32 types, descriptions and metadata in the spec."""
    from coremltools.proto import FeatureTypes_pb2 as ft

    mspec = ml.get_spec()
    for desc, t in zip(mspec.description.output, spec.outputs):
        arr = desc.type.multiArrayType
        arr.dataType = ft.ArrayFeatureType.FLOAT32
        if not any(isinstance(d, tuple) for d in t.coreml_shape):
            del arr.shape[:]
            arr.shape.extend(int(d) for d in t.coreml_shape)
    for d, t in zip(mspec.description.input, spec.inputs):
        d.shortDescription = t.description
    for d, t in zip(mspec.description.output, spec.outputs):
        d.shortDescription = t.description
    md = mspec.description.metadata
    md.author = author
    md.license = license_text
    md.shortDescription = description
    md.versionString = str(metadata.get("emovox_version", ""))
    user = md.userDefined
    user["labels"] = json.dumps(metadata["labels"])
    user["temperature"] = repr(float(metadata["temperature"]))
    user["sample_rate_hz"] = str(metadata["sample_rate_hz"])
    user["input_kind"] = spec.kind
    user["emovox"] = json.dumps(metadata, separators=(",", ":"))
    weights_dir = ml.weights_dir if mspec.WhichOneof("Type") == "mlProgram" else None
    return ct.models.MLModel(mspec, weights_dir=weights_dir, skip_model_load=True)


def can_predict() -> bool:
    """Core ML models run on macOS only."""
    return sys.platform == "darwin"


class CoreMLRunner:
    """macOS only: runs a saved Core ML model: ``runner(*arrays) -> list of arrays``."""

    def __init__(self, path: Path, spec: GraphSpec):
        ct = _ct()
        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        self.in_names = [t.name for t in spec.inputs]
        self.out_names = [t.name for t in spec.outputs]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        out = self.model.predict({n: np.asarray(a, dtype=np.float32) for n, a in zip(self.in_names, arrays)})
        return [np.asarray(out[n]) for n in self.out_names]

