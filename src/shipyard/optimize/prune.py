"""Magnitude pruning of ONNX models with onnx + numpy only (no torch).

Why it looks like this: zeroing weights, which is all `torch.nn.utils.prune` does, changes neither the
file size nor the speed (pytorch #32928, #36214). So the two modes here each deliver something real:

* unstructured: zero the smallest |w| of every MatMul/Gemm/Conv weight and store a tensor as an ONNX
  `sparse_initializer` only where that is smaller than the dense tensor. The gain is size (on disk and
  after compression) only — sparse is not fast (movement-pruning README, ORT #2121), so claim no speed.
  Indices are int64: onnxruntime also loads int8/16/32 indices, but `onnx.checker` rejects anything but
  INT64; a float32 value plus its int64 index costs 12 bytes, so sparse storage wins below ~1/3 density.
* structured: remove whole hidden units of MLP/FFN chains (MatMul -> elementwise ops -> MatMul), slicing
  both weight matrices (and per-unit constants such as the bias) so the shapes — and the work — shrink.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from shipyard.errors import InvalidInputError, ShipyardError
from shipyard.optimize.applicability import NotApplicable
from shipyard.optimize.measure import gzip_size

MIN_ELEMENTS = 256  # smaller weights are not worth pruning (and would hurt accuracy for nothing)
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16}
WEIGHT_SLOTS = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (1,)}  # bias inputs are never weights
ELEMENTWISE = {
    *("Relu", "Tanh", "Sigmoid", "Erf", "Gelu", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal"),
    *("Identity", "Cast", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid"),
    *("HardSwish", "Mish", "ThresholdedRelu", "Clip", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"),
}


def prune_onnx(source: Path, dest: Path, *, sparsity: float, structured: bool = False) -> dict[str, Any]:
    """Write a pruned copy of the ONNX model at `source` to `dest`; return facts for the recipe and report."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, Real) or not 0 < sparsity < 1:
        raise InvalidInputError(f"sparsity must be a number in (0, 1), got {sparsity!r}", field="sparsity")
    source, dest = Path(source), Path(dest)
    if dest.resolve() == source.resolve():
        raise InvalidInputError("write the pruned model to a new file, not over its source", field="dest")
    model = _load(source)
    sparsity = float(sparsity)
    facts = _prune_structured(model, sparsity) if structured else _prune_unstructured(model, sparsity)
    _save_and_verify(model, source, dest)
    facts["size_bytes"] = dest.stat().st_size
    facts["size_gzip_bytes"] = gzip_size(dest)
    return facts


def _prune_unstructured(model: onnx.ModelProto, sparsity: float) -> dict[str, Any]:
    graph = model.graph
    index = _Index(graph)
    tensors = total = zeroed = 0
    stored_sparse: list[TensorProto] = []
    for init in graph.initializer:
        uses = [(index.nodes[k].op_type, slot) for k, slot in index.consumers.get(init.name, [])]
        eligible = (
            init.data_type in FLOAT_TYPES
            and len(init.dims) >= 2
            and math.prod(init.dims) >= MIN_ELEMENTS
            and init.name not in index.unsafe
            and bool(uses)
            and all(slot in WEIGHT_SLOTS.get(op, ()) for op, slot in uses)
        )
        if not eligible:
            continue
        w = numpy_helper.to_array(init).copy()
        flat = w.reshape(-1)
        k = round(sparsity * flat.size)
        if k:
            flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0
        tensors += 1
        total += flat.size
        zeroed += int(flat.size - np.count_nonzero(flat))
        dense = numpy_helper.from_array(w, init.name)
        indices = np.flatnonzero(flat).astype(np.int64)
        if model.ir_version >= 6 and flat[indices].nbytes + indices.nbytes < w.nbytes:  # cheap test first
            values = numpy_helper.from_array(flat[indices], init.name)
            sparse = helper.make_sparse_tensor(
                values, numpy_helper.from_array(indices, f"{init.name}/indices"), w.shape
            )
            if sparse.ByteSize() < dense.ByteSize():
                graph.sparse_initializer.append(sparse)
                stored_sparse.append(init)
                continue
        init.CopyFrom(dense)
    if not total:
        raise NotApplicable(
            "nothing to prune: no float MatMul/Gemm/Conv weight initializer with at least "
            f"{MIN_ELEMENTS} elements (biases, 1-D tensors, embedding tables used by Gather and "
            "overridable graph inputs are skipped)"
        )
    names = [init.name for init in stored_sparse]
    for init in stored_sparse:
        graph.initializer.remove(init)
    return {
        "method": "magnitude",
        "structured": False,
        "sparsity_target": sparsity,
        "sparsity_achieved": zeroed / total,
        "tensors": tensors,
        "parameters_total": total,
        "parameters_zeroed": zeroed,
        "stored_sparse": names,
    }


@dataclass
class _Chain:
    """Weight nodes (by index) around an elementwise path; `*_axis` is the axis of each weight that indexes
    the hidden units."""

    first: int
    w1: str
    w1_axis: int
    second: int = -1
    w2: str = ""
    w2_axis: int = 0
    per_unit: list[tuple[int, int]] = field(default_factory=list)  # (node, input slot) of per-unit constants
    hidden: set[str] = field(default_factory=set)


class _Index:
    """Who produces and who consumes each tensor of the top-level graph (nodes by index)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.inits = {i.name: i for i in graph.initializer}
        self.producers = {out: k for k, node in enumerate(self.nodes) for out in node.output}
        self.consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for k, node in enumerate(self.nodes):
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((k, slot))
        outer = _subgraph_names(graph) | {i.name for i in graph.input} | {o.name for o in graph.output}
        self.unsafe = outer  # visible outside the top-level graph: must keep its shape

    def owned(self, name: str, k: int) -> bool:
        """Slicing tensor `name` affects node `k` only."""
        return name not in self.unsafe and all(user == k for user, _ in self.consumers.get(name, []))

    def constant_dims(self, name: str) -> list[int] | None:
        if name in self.inits:
            return list(self.inits[name].dims)
        node = self.nodes[self.producers[name]] if name in self.producers else None
        if node is None or node.op_type != "Constant" or len(node.attribute) != 1:
            return None
        value = helper.get_attribute_value(node.attribute[0])
        if isinstance(value, TensorProto):
            return list(value.dims)
        return [len(value)] if isinstance(value, list) else []


def _prune_structured(model: onnx.ModelProto, sparsity: float) -> dict[str, Any]:
    graph = model.graph
    index = _Index(graph)
    chains = [c for k in range(len(index.nodes)) if (c := _chain_from(index, k)) is not None]
    if not chains:
        raise NotApplicable(
            "structured pruning found no prunable MLP/FFN chain: it needs MatMul/Gemm -> elementwise ops "
            "-> MatMul/Gemm with constant weights, and a hidden tensor used nowhere else"
        )
    before = _parameter_count(graph)
    arrays = {n: numpy_helper.to_array(index.inits[n]) for c in chains for n in (c.w1, c.w2)}
    shared: set[str] = set()
    reports = []
    for c in chains:  # in graph order; a weight shared by two chains is sliced on a different axis by each
        w1, w2 = arrays[c.w1], arrays[c.w2]
        units = w1.shape[c.w1_axis]
        score = np.linalg.norm(w1.astype(np.float64), axis=1 - c.w1_axis) * np.linalg.norm(
            w2.astype(np.float64), axis=1 - c.w2_axis
        )
        keep = max(1, units - round(units * sparsity))
        kept = np.sort(np.argsort(-score, kind="stable")[:keep])
        arrays[c.w1] = np.take(w1, kept, axis=c.w1_axis)
        arrays[c.w2] = np.take(w2, kept, axis=c.w2_axis)
        for user, slot in c.per_unit:
            shared |= _slice_per_unit(graph, index, user, slot, kept)
        first, second = index.nodes[c.first], index.nodes[c.second]
        reports.append(
            {"first": _label(first), "second": _label(second), "units_before": units, "units_after": keep}
        )
    for name, array in arrays.items():
        index.inits[name].CopyFrom(numpy_helper.from_array(array, name))
    read = {name for node in graph.node for name in node.input}
    for name in shared - read:  # every reader got its own sliced copy
        graph.initializer.remove(index.inits[name])
    hidden = set().union(*(c.hidden for c in chains))
    for vi in [vi for vi in graph.value_info if vi.name in hidden]:  # their last dimension changed
        graph.value_info.remove(vi)
    return {
        "method": "magnitude",
        "structured": True,
        "sparsity_target": sparsity,
        "chains": reports,
        "parameters_before": before,
        "parameters_after": _parameter_count(graph),
    }


def _chain_from(index: _Index, k: int) -> _Chain | None:
    """The chain whose first weight node is node `k`, if it is one that can be sliced safely."""
    first = index.nodes[k]
    weight = _weight(first, index, first=True)
    if weight is None or not index.owned(weight[0], k) or len(first.output) != 1:
        return None
    chain = _Chain(k, *weight, hidden={first.output[0]})
    units = index.inits[chain.w1].dims[chain.w1_axis]
    bias = first.input[2] if first.op_type == "Gemm" and len(first.input) > 2 else ""
    if units < 2 or not _accept_input(index, chain, bias, k, units):
        return None
    path: list[int] = []
    seconds: list[int] = []
    frontier = [first.output[0]]
    while frontier:  # everything computed from the hidden tensor, up to the second weight node
        tensor = frontier.pop()
        if tensor in index.unsafe:
            return None
        for user, slot in index.consumers.get(tensor, []):
            node = index.nodes[user]
            if user in path or user in seconds:
                continue
            second = _weight(node, index, first=False) if slot == 0 else None
            if second is not None:
                seconds.append(user)
                chain.second, (chain.w2, chain.w2_axis) = user, second
            elif node.op_type in ELEMENTWISE and node.domain in ("", "ai.onnx") and len(node.output) == 1:
                path.append(user)
                chain.hidden.add(node.output[0])
                frontier.append(node.output[0])
            else:
                return None
    if len(seconds) != 1 or index.inits[chain.w2].dims[chain.w2_axis] != units:
        return None
    second_inputs = index.nodes[chain.second].input[1:]  # the hidden tensor may only enter as input 0
    if not index.owned(chain.w2, chain.second) or any(name in chain.hidden for name in second_inputs):
        return None
    inputs = [(name, user) for user in path for name in index.nodes[user].input]
    return chain if all(_accept_input(index, chain, name, user, units) for name, user in inputs) else None


def _weight(node: onnx.NodeProto, index: _Index, *, first: bool) -> tuple[str, int] | None:
    """The constant 2-D weight of a MatMul/Gemm and the axis that indexes hidden units, or None."""
    if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    tensor = index.inits.get(node.input[1])
    if tensor is None or tensor.data_type not in FLOAT_TYPES or len(tensor.dims) != 2:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if not first and attrs.get("transA", 0):
        return None
    trans_b = 1 if node.op_type == "Gemm" and attrs.get("transB", 0) else 0
    return node.input[1], (1 - trans_b if first else trans_b)


def _accept_input(index: _Index, chain: _Chain, name: str, user: int, units: int) -> bool:
    """Input `name` of path node `user` is hidden, absent, a broadcast constant, or a per-unit constant
    (recorded in `chain.per_unit`, to be sliced along with the weights)."""
    if not name or name in chain.hidden:
        return True
    dims = index.constant_dims(name)
    if dims is None:
        return False
    if not dims or dims[-1] == 1:
        return True
    if dims[-1] == units and name in index.inits and name not in index.unsafe:
        chain.per_unit.extend((user, slot) for slot, n in enumerate(index.nodes[user].input) if n == name)
        return True
    return False


def _slice_per_unit(
    graph: onnx.GraphProto, index: _Index, user: int, slot: int, kept: np.ndarray
) -> set[str]:
    """Slice the constant at input `slot` of node `user` to the kept units; a constant that other nodes also
    read (exporters deduplicate equal tensors, e.g. all-zero biases) is copied first. Returns the names of
    constants that were copied rather than sliced."""
    node = index.nodes[user]
    name = node.input[slot]
    sliced = np.take(numpy_helper.to_array(index.inits[name]), kept, axis=-1)
    if index.owned(name, user):
        index.inits[name].CopyFrom(numpy_helper.from_array(sliced, name))
        return set()
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    copy = next(f"{name}_pruned{i}" for i in range(len(taken) + 1) if f"{name}_pruned{i}" not in taken)
    graph.initializer.append(numpy_helper.from_array(sliced, copy))
    node.input[slot] = copy
    return {name}


def _load(source: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(source))
        onnx.checker.check_model(model)
    except (OSError, ValueError, DecodeError, onnx.checker.ValidationError) as exc:
        raise InvalidInputError(f"{source} is not a valid ONNX model: {exc}", field="source") from exc
    return model


def _save_and_verify(model: onnx.ModelProto, source: Path, dest: Path) -> None:
    import onnxruntime as ort

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        onnx.save_model(model, str(dest))
        onnx.checker.check_model(str(dest))
    except (ValueError, onnx.checker.ValidationError) as exc:
        raise ShipyardError(f"the pruned model is not valid ONNX: {exc}") from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(dest), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's exception classes are not public API
        dest.unlink(missing_ok=True)
        try:
            ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        except Exception as source_exc:
            raise InvalidInputError(
                f"onnxruntime cannot load the source model: {source_exc}", field="source"
            ) from source_exc
        raise ShipyardError(f"onnxruntime rejects the pruned model (a Shipyard bug): {exc}") from exc


def _subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name used inside If/Loop/Scan bodies: those may be outer-scope references."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= {i for n in sub.node for i in n.input} | _subgraph_names(sub)
    return names


def _parameter_count(graph: onnx.GraphProto) -> int:
    dims = [t.dims for t in graph.initializer] + [t.dims for t in graph.sparse_initializer]
    return sum(math.prod(d) for d in dims)


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]
