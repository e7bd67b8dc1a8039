"""``emovox.onnx_backend.OnnxModel``, the import path the device guide documents; the runtime lives in :mod:`emovox.runtime`.

Kept as a one-line module (not a package alias) so the documented path imports exactly what it always did, torch-free.
"""

from emovox.runtime.onnx_backend import OnnxModel

__all__ = ["OnnxModel"]
