"""Int8 quantization's failure modes: a model with nothing to quantize does not apply; the
quantizer itself failing is the tool's fault (a 500), never blamed on the caller's input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from shipyard.errors import InvalidInputError, ShipyardError
from shipyard.optimize import quantize
from shipyard.optimize.applicability import NotApplicable


def _model(path: Path, *, constant_weight: bool) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    inputs, inits = [x], []
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "W"
    )
    if constant_weight:
        inits.append(weight)
    else:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [16, 8]))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g", inputs, [y], inits
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_model_without_constant_weights_does_not_apply(tmp_path: Path) -> None:
    source = _model(tmp_path / "m.onnx", constant_weight=False)
    with pytest.raises(NotApplicable, match="nothing to change"):
        quantize.dynamic(source, tmp_path / "q.onnx")


def test_a_quantizer_crash_is_a_server_side_error(tmp_path: Path) -> None:
    source = _model(tmp_path / "m.onnx", constant_weight=True)
    with pytest.raises(
        ShipyardError, match="dynamic quantization failed in onnxruntime's quantizer"
    ) as caught:
        quantize.dynamic(source, tmp_path / "missing-folder" / "q.onnx")
    assert not isinstance(caught.value, InvalidInputError)
    assert caught.value.status_code == 500 and caught.value.exit_code == 10


def test_dynamic_quantization_records_its_settings(tmp_path: Path) -> None:
    source = _model(tmp_path / "m.onnx", constant_weight=True)
    facts = quantize.dynamic(source, tmp_path / "q.onnx", per_channel=True)
    assert facts["method"] == "dynamic" and facts["per_channel"] is True
    assert (tmp_path / "q.onnx").is_file()
