"""TorchScript: the traced graph saved with ``torch.jit.save``, for C++ (libtorch) and mobile runtimes.

PyTorch 2.10+ marks TorchScript deprecated in favour of ``torch.export``, but libtorch and
PyTorch Mobile runtimes still load these files; the deprecation warnings are silenced here.

The archive carries ``config.json`` (the model config), ``export.json`` (labels, temperature,
tensor names and shapes) and ``preprocessing.json`` as ``_extra_files``; read them back with
``torch.jit.load(path, _extra_files={"export.json": ""})``. Inputs are positional, in the order of
``export.json``'s ``inputs``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .coreml_export import trace
from .spec import GraphSpec

EXTRA_FILES = ("config.json", "export.json", "preprocessing.json")


def write_torchscript(spec: GraphSpec, path: Path, *, config: dict[str, Any], metadata: dict[str, Any],
                      preprocessing: dict[str, Any]) -> None:
    traced = trace(spec.module, spec.example)
    extra = {
        "config.json": json.dumps(config, indent=1),
        "export.json": json.dumps({**metadata, **spec.io_dict()}, indent=1),
        "preprocessing.json": json.dumps(preprocessing),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in favour of torch.export
        torch.jit.save(traced, str(path), _extra_files=extra)


class TorchScriptRunner:
    """Runs a saved TorchScript graph: ``runner(*arrays) -> list of arrays``."""

    def __init__(self, path: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(path), map_location="cpu")

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in out]
