"""TorchScript: the traced graph saved with ``torch.jit.save``, for C++ (libtorch) and mobile runtimes.

PyTorch 2.10+ marks TorchScript deprecated in favour of ``torch.export``, but libtorch and
PyTorch Mobile runtimes still load these files; the deprecation warnings are silenced here.

The archive carries ``config.json`` (the model config), ``export.json`` (labels, temperature,
tensor names and shapes) and ``preprocessing.json`` as ``_extra_files``; read them back with
``torch.jit.load(path, _extra_files={"export.json": ""})``. Inputs are positional, in the order of
``export.json``'s ``inputs``, except for a streaming LSTM's feature input, which takes the streaming MFCC-LSTM's
interface: ``model(x, hidden) -> (logits, (h, c))`` with ``hidden`` the previous call's ``(h, c)``
or None (zeros), so the streaming MFCC-LSTM's loop runs it unchanged (:class:`~.graphs.HiddenStateStep`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovox.export.coreml_export import trace
from emovox.export.graphs import HiddenStateStep
from emovox.export.spec import GraphSpec

EXTRA_FILES = ("config.json", "export.json", "preprocessing.json")


def has_hidden_state_interface(spec: GraphSpec) -> bool:
    """Whether the TorchScript file of ``spec`` takes ``(x, (h, c))`` (a streaming LSTM's feature input)."""
    return spec.streaming and spec.kind == "features" and len(spec.state_shapes) == 2


def write_torchscript(spec: GraphSpec, path: Path, *, config: dict[str, Any], metadata: dict[str, Any],
                      preprocessing: dict[str, Any]) -> None:
    module = trace(spec.module, spec.example)
    info = {**metadata, **spec.io_dict()}
    if has_hidden_state_interface(spec):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.script(HiddenStateStep(module, spec.state_shapes, spec.state_batch_axes))
        names = [t.name for t in (*spec.inputs, *spec.outputs)]
        info["torchscript_call"] = (f"{names[3]}, ({names[4]}, {names[5]}) = model({names[0]}, hidden) with hidden = "
                                    f"({names[1]}, {names[2]}) from the previous call, or None (zeros) to start "
                                    "(the streaming MFCC-LSTM's interface)")
    extra = {
        "config.json": json.dumps(config, indent=1),
        "export.json": json.dumps(info, indent=1),
        "preprocessing.json": json.dumps(preprocessing),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in favour of torch.export
        torch.jit.save(module, str(path), _extra_files=extra)


class TorchScriptRunner:
    """Runs a saved TorchScript graph: ``runner(*arrays) -> list of arrays`` (the state flattened
    for files with the streaming MFCC-LSTM's ``(x, (h, c))`` interface)."""

    def __init__(self, path: Path, spec: GraphSpec | None = None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(path), map_location="cpu")
        self.tuple_state = spec is not None and has_hidden_state_interface(spec)

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]
        with torch.no_grad():
            if self.tuple_state:
                logits, (h, c) = self.module(tensors[0], tuple(tensors[1:]) if len(tensors) > 1 else None)
                out = (logits, h, c)
            else:
                out = self.module(*tensors)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in out]
