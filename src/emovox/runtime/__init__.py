"""The torch-free inference runtime: ONNX Runtime sessions and the materialisation of shipped graphs (no torch import here)."""
