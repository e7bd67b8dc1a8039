"""Graphs shipped without their weights (initializers stored as ``<source>:<name>`` references) are filled from the
weights the model names, checked, and saved self-contained; a reference nothing holds, or an array of the wrong
shape or type, is refused naming the graph and the initializer."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from emovox.errors import ModelLoadError
from emovox.runtime.onnx_materialise import fill_external_weights
from emovox.text.data import TextModelError


def graph_with_reference(path, location="enc:w", dims=(2, 3)):
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims)
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    node = helper.make_node("Add", ["x", "w"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], initializer=[w])
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_references_are_filled_and_the_graph_runs(tmp_path):
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    out = tmp_path / "filled.onnx"
    fill_external_weights(graph_with_reference(tmp_path / "g.onnx"), out,
                          lambda source, name: weights.get(name) if source == "enc" else None)
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(y[0], weights["w"] + 1)


@pytest.mark.parametrize("arr, words", [
    (None, "initializer 'w' refers to 'enc:w', which nobody holds"),
    (np.zeros((3, 2), np.float32), "'w' expects float32 (2, 3), the weights hold float32 (3, 2)"),
    (np.zeros((2, 3), np.float64), "'w' expects float32 (2, 3), the weights hold float64 (2, 3)"),
])
@pytest.mark.parametrize("error", [ModelLoadError, TextModelError])
def test_a_missing_or_mismatched_weight_is_refused_naming_it(tmp_path, arr, words, error):
    graph = graph_with_reference(tmp_path / "g.onnx")
    out = tmp_path / "filled.onnx"
    with pytest.raises(error) as e:
        fill_external_weights(graph, out, lambda source, name: arr, error=error, missing="which nobody holds")
    assert str(e.value) == f"{graph}: {words}" and not out.exists()
