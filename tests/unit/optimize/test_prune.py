"""Magnitude pruning of ONNX files: real models (an sklearn MLP on digits, a BERT-shaped FFN) run in ORT."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from shipyard.errors import InvalidInputError
from shipyard.optimize.applicability import NotApplicable
from shipyard.optimize.prune import prune_onnx

RNG = np.random.default_rng(7)
TRAIN = 1200  # digits rows used for training; the other 597 are held out


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(np.float32), y


@pytest.fixture(scope="module")
def mlp(digits: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skl2onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=100, random_state=0).fit(x[:TRAIN], y[:TRAIN])
    model = skl2onnx.to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    onnx.save_model(model, str(path))
    return path


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> Path:
    initializer = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _float(name: str, *dims: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def _dead_units(w1: np.ndarray, w2: np.ndarray, dead: np.ndarray, *, trans: bool = False) -> None:
    """Silence hidden units in place: they then contribute exactly nothing, so removing them is exact."""
    if trans:
        w1[dead, :], w2[:, dead] = 0, 0
    else:
        w1[:, dead], w2[dead, :] = 0, 0


def _bert_ffn(tmp_path: Path, *, extra_output: str | None = None, activation: str = "gelu") -> Path:
    """BERT's FFN as exported by torch: MatMul -> Add(b1) -> exploded Gelu -> MatMul -> Add(b2) -> + X."""
    w1, w2 = RNG.standard_normal((32, 128)), RNG.standard_normal((128, 32))
    _dead_units(w1, w2, np.arange(0, 128, 2))
    inits = {"W1": w1, "b1": RNG.standard_normal(128), "W2": w2, "b2": RNG.standard_normal(32)}
    inits |= {"one": np.array(1.0), "half": np.array(0.5)}
    sqrt2 = helper.make_tensor("sqrt2_value", TensorProto.FLOAT, [], [math.sqrt(2)])
    gelu = [
        helper.make_node("Constant", [], ["sqrt2"], value=sqrt2),
        helper.make_node("Div", ["h", "sqrt2"], ["h_div"]),
        helper.make_node("Erf", ["h_div"], ["h_erf"]),
        helper.make_node("Add", ["h_erf", "one"], ["h_erf1"]),
        helper.make_node("Mul", ["h", "h_erf1"], ["h_mul"]),
        helper.make_node("Mul", ["h_mul", "half"], ["act"]),
    ]
    if activation == "softmax":  # not elementwise: mixes the hidden units
        gelu = [helper.make_node("Softmax", ["h"], ["act"], axis=-1)]
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["h0"], name="ffn_in"),
        helper.make_node("Add", ["h0", "b1"], ["h"]),
        *gelu,
        helper.make_node("MatMul", ["act", "W2"], ["o"], name="ffn_out"),
        helper.make_node("Add", ["o", "b2"], ["o2"]),
        helper.make_node("Add", ["o2", "X"], ["Y"]),
    ]
    outputs = [_float("Y", "batch", "seq", 32)] + (
        [_float(extra_output, "batch", "seq", 128)] if extra_output else []
    )
    return _save(tmp_path / "ffn_source.onnx", nodes, inits, [_float("X", "batch", "seq", 32)], outputs)


def test_skl2onnx_mlp_is_matmul_add_relu_matmul(mlp: Path) -> None:
    model = onnx.load(str(mlp))
    ops = [n.op_type for n in model.graph.node]
    start = ops.index("MatMul")
    assert ops[start : start + 5] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    assert _init(model, "coefficient").shape == (64, 64)
    assert _init(model, "intercepts").shape == (1, 64)
    assert _init(model, "coefficient1").shape == (64, 10)


def test_unstructured_half_zeroes_half_and_keeps_dense(
    mlp: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, _ = digits
    facts = prune_onnx(mlp, tmp_path / "u50.onnx", sparsity=0.5)

    assert facts["method"] == "magnitude"
    assert facts["structured"] is False
    assert facts["sparsity_target"] == 0.5
    assert facts["sparsity_achieved"] == pytest.approx(0.5, abs=0.01)
    assert facts["tensors"] == 2  # the two weight matrices; biases are skipped
    assert facts["parameters_zeroed"] == round(facts["sparsity_achieved"] * facts["parameters_total"])
    assert facts["stored_sparse"] == []  # at 50 % density int64 indices would make the file bigger
    assert facts["size_bytes"] == (tmp_path / "u50.onnx").stat().st_size
    assert facts["size_gzip_bytes"] < facts["size_bytes"]  # the zeros compress

    pruned = onnx.load(str(tmp_path / "u50.onnx"))
    w = _init(pruned, "coefficient")
    assert (w == 0).mean() == pytest.approx(0.5, abs=0.01)
    assert np.count_nonzero(_init(pruned, "intercepts")) == 64
    before, after = _run(mlp, {"X": x}), _run(tmp_path / "u50.onnx", {"X": x})
    assert [a.shape for a in after] == [b.shape for b in before]
    assert (after[0] == before[0]).mean() > 0.9


def test_unstructured_90_stores_sparse_initializers_that_ort_reads(
    mlp: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, _ = digits
    dest = tmp_path / "u90.onnx"
    facts = prune_onnx(mlp, dest, sparsity=0.9)

    assert facts["sparsity_achieved"] == pytest.approx(0.9, abs=0.01)
    assert sorted(facts["stored_sparse"]) == ["coefficient", "coefficient1"]
    assert facts["size_bytes"] < mlp.stat().st_size * 0.5
    model = onnx.load(str(dest))
    onnx.checker.check_model(model)
    assert {s.values.name for s in model.graph.sparse_initializer} == {"coefficient", "coefficient1"}
    assert all(s.indices.data_type == TensorProto.INT64 for s in model.graph.sparse_initializer)

    # ORT must read the sparse tensors exactly as the same weights stored densely.
    dense = onnx.load(str(dest))
    for sparse in dense.graph.sparse_initializer:
        values, indices = numpy_helper.to_array(sparse.values), numpy_helper.to_array(sparse.indices)
        full = np.zeros(math.prod(sparse.dims), values.dtype)
        full[indices] = values
        assert np.count_nonzero(full) == pytest.approx(0.1 * full.size, abs=1)
        dense.graph.initializer.append(numpy_helper.from_array(full.reshape(sparse.dims), sparse.values.name))
    del dense.graph.sparse_initializer[:]
    onnx.save_model(dense, str(tmp_path / "dense.onnx"))
    from_sparse, from_dense = _run(dest, {"X": x}), _run(tmp_path / "dense.onnx", {"X": x})
    assert from_sparse[1].shape == (len(x), 10)
    np.testing.assert_array_equal(from_sparse[1], from_dense[1])


def test_structured_half_shrinks_the_hidden_layer(
    mlp: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, _ = digits
    dest = tmp_path / "s50.onnx"
    facts = prune_onnx(mlp, dest, sparsity=0.5, structured=True)

    assert facts["structured"] is True
    assert facts["chains"] == [
        {"first": "MatMul", "second": "MatMul1", "units_before": 64, "units_after": 32}
    ]
    assert facts["parameters_after"] < facts["parameters_before"]
    assert facts["parameters_before"] - facts["parameters_after"] == 32 * (64 + 1 + 10)
    model = onnx.load(str(dest))
    assert _init(model, "coefficient").shape == (64, 32)
    assert _init(model, "intercepts").shape == (1, 32)
    assert _init(model, "coefficient1").shape == (32, 10)
    assert facts["size_bytes"] < mlp.stat().st_size
    assert [a.shape for a in _run(dest, {"X": x})] == [a.shape for a in _run(mlp, {"X": x})]


def test_structured_ten_percent_keeps_the_digits_accuracy(
    mlp: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y = digits[0][TRAIN:], digits[1][TRAIN:]
    facts = prune_onnx(mlp, tmp_path / "s10.onnx", sparsity=0.1, structured=True)

    assert facts["chains"][0]["units_after"] == 58
    before, after = _run(mlp, {"X": x})[0], _run(tmp_path / "s10.onnx", {"X": x})[0]
    assert (after == before).mean() > 0.95
    assert (after == y).mean() > (before == y).mean() - 0.03


def test_structured_finds_bert_ffn_through_exploded_gelu(tmp_path: Path) -> None:
    source = _bert_ffn(tmp_path)
    dest = tmp_path / "ffn.onnx"
    facts = prune_onnx(source, dest, sparsity=0.5, structured=True)

    assert facts["chains"] == [
        {"first": "ffn_in", "second": "ffn_out", "units_before": 128, "units_after": 64}
    ]
    model = onnx.load(str(dest))
    assert _init(model, "W1").shape == (32, 64)
    assert _init(model, "b1").shape == (64,)
    assert _init(model, "W2").shape == (64, 32)
    x = RNG.standard_normal((2, 7, 32)).astype(np.float32)
    # Half the units were dead, so they are the ones removed and the output does not move.
    np.testing.assert_allclose(_run(dest, {"X": x})[0], _run(source, {"X": x})[0], rtol=1e-5, atol=1e-5)


def test_structured_handles_gemm_with_transposed_weights(tmp_path: Path) -> None:
    w1, w2 = RNG.standard_normal((48, 32)), RNG.standard_normal((32, 48))  # stored [h, in] and [out, h]
    _dead_units(w1, w2, np.arange(0, 48, 3), trans=True)
    nodes = [
        helper.make_node("Gemm", ["X", "W1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Gemm", ["t", "W2", "b2"], ["Y"], transB=1, name="fc2"),
    ]
    inits = {"W1": w1, "b1": RNG.standard_normal(48), "W2": w2, "b2": RNG.standard_normal(32)}
    source = _save(
        tmp_path / "gemm.onnx", nodes, inits, [_float("X", "batch", 32)], [_float("Y", "batch", 32)]
    )
    facts = prune_onnx(source, tmp_path / "out.onnx", sparsity=1 / 3, structured=True)

    assert facts["chains"][0]["units_after"] == 32
    model = onnx.load(str(tmp_path / "out.onnx"))
    assert _init(model, "W1").shape == (32, 32)
    assert _init(model, "b1").shape == (32,)
    assert _init(model, "W2").shape == (32, 32)
    x = RNG.standard_normal((5, 32)).astype(np.float32)
    out, ref = _run(tmp_path / "out.onnx", {"X": x})[0], _run(source, {"X": x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_structured_slices_a_weight_shared_by_two_chains_and_copies_a_shared_bias(tmp_path: Path) -> None:
    """Three layers: W2 closes chain 1 and opens chain 2; both Adds read one bias (as torch's dynamo
    exporter does when it deduplicates equal tensors, e.g. freshly initialised all-zero biases)."""
    w1, w2, w3 = RNG.standard_normal((32, 48)), RNG.standard_normal((48, 48)), RNG.standard_normal((48, 32))
    _dead_units(w1, w2, np.arange(0, 48, 3))
    _dead_units(w2, w3, np.arange(1, 48, 3))
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["a1"], name="fc1"),
        helper.make_node("Add", ["a1", "b"], ["z1"]),
        helper.make_node("Relu", ["z1"], ["h1"]),
        helper.make_node("MatMul", ["h1", "W2"], ["a2"], name="fc2"),
        helper.make_node("Add", ["a2", "b"], ["z2"]),
        helper.make_node("Relu", ["z2"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W3"], ["Y"], name="fc3"),
    ]
    inits = {"W1": w1, "W2": w2, "W3": w3, "b": RNG.standard_normal(48)}
    source = _save(
        tmp_path / "mlp3.onnx", nodes, inits, [_float("X", "batch", 32)], [_float("Y", "batch", 32)]
    )
    facts = prune_onnx(source, tmp_path / "out.onnx", sparsity=1 / 3, structured=True)

    assert [(c["first"], c["second"], c["units_after"]) for c in facts["chains"]] == [
        ("fc1", "fc2", 32),
        ("fc2", "fc3", 32),
    ]
    model = onnx.load(str(tmp_path / "out.onnx"))
    assert _init(model, "W2").shape == (32, 32)
    assert "b" not in {t.name for t in model.graph.initializer}  # each Add now reads its own sliced copy
    x = RNG.standard_normal((5, 32)).astype(np.float32)
    out, ref = _run(tmp_path / "out.onnx", {"X": x})[0], _run(source, {"X": x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", ["hidden_is_an_output", "softmax_in_path"])
def test_structured_skips_chains_that_are_not_safe_to_slice(tmp_path: Path, case: str) -> None:
    if case == "hidden_is_an_output":
        source = _bert_ffn(tmp_path, extra_output="h_erf")
    else:
        source = _bert_ffn(tmp_path, activation="softmax")
    with pytest.raises(NotApplicable, match="no prunable MLP/FFN chain"):
        prune_onnx(source, tmp_path / "out.onnx", sparsity=0.5, structured=True)
    assert not (tmp_path / "out.onnx").exists()


def test_nothing_to_prune_does_not_apply(tmp_path: Path) -> None:
    """An embedding table read by Gather and a weight too small to matter: no eligible weight."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"]),
        helper.make_node("MatMul", ["e", "W"], ["Y"]),
    ]
    inits = {"table": RNG.standard_normal((1000, 16)), "W": RNG.standard_normal((16, 4))}
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])
    source = _save(tmp_path / "emb.onnx", nodes, inits, [ids], [_float("Y", "batch", 4)])
    with pytest.raises(NotApplicable, match="nothing to prune"):
        prune_onnx(source, tmp_path / "out.onnx", sparsity=0.5)
    with pytest.raises(NotApplicable, match="no prunable MLP/FFN chain"):
        prune_onnx(source, tmp_path / "out.onnx", sparsity=0.5, structured=True)


@pytest.mark.parametrize("sparsity", [0, 1, 0.0, 1.0, -0.1, 1.5, math.nan, True, "0.5", None])
def test_bad_sparsity_is_rejected(mlp: Path, tmp_path: Path, sparsity: Any) -> None:
    with pytest.raises(InvalidInputError) as exc:
        prune_onnx(mlp, tmp_path / "out.onnx", sparsity=sparsity)
    assert exc.value.field == "sparsity"


@pytest.mark.parametrize("content", [b"not an onnx file", b"", None])
def test_a_source_that_is_not_onnx_is_rejected(tmp_path: Path, content: bytes | None) -> None:
    source = tmp_path / "model.onnx"
    if content is not None:
        source.write_bytes(content)
    with pytest.raises(InvalidInputError, match="not a valid ONNX model") as exc:
        prune_onnx(source, tmp_path / "out.onnx", sparsity=0.5)
    assert exc.value.field == "source"


def test_dest_may_not_overwrite_the_source(mlp: Path) -> None:
    with pytest.raises(InvalidInputError) as exc:
        prune_onnx(mlp, mlp, sparsity=0.5)
    assert exc.value.field == "dest"
