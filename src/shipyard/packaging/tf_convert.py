"""The TensorFlow side of pushing a SavedModel, run as a child process by
`shipyard.packaging.tf_savedmodel` (so TensorFlow never shares a process with torch, and its
start-up cost and logs stay out of the push): read every signature, convert each to ONNX with
tf2onnx, and check the ONNX graph against TensorFlow on sample inputs.

    python -m shipyard.packaging.tf_convert SAVED_MODEL_DIR OUT_DIR [RTOL ATOL [trust]]

writes OUT_DIR/<index>.onnx per signature and OUT_DIR/result.json: either
{"signatures": {...}, "versions": {...}} or {"error": "...", "unsupported_ops": [...]}.

Signatures whose method is classify or regress take serialized tf.Example protos, which ONNX
cannot parse: their graph is converted from the parsed dense features on, and the feature keys,
types, shapes and defaults are recorded so the server builds the features from JSON `examples`
itself (as TF Serving builds the Example protos it feeds the graph).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 18
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-5
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
_PARSE_OPS = ("ParseExample", "ParseExampleV2")
# Ops that read or write files, or run Python, when TensorFlow runs them (checkpoint save and
# restore ops are absent: every SavedModel has them, and they touch only its own variables).
_SIDE_EFFECTS = frozenset(
    {
        "ReadFile",
        "WriteFile",
        "MatchingFiles",
        "ImmutableConst",
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "WholeFileReader",
        "WholeFileReaderV2",
        "TextLineReader",
        "TextLineReaderV2",
        "TFRecordReader",
        "TFRecordReaderV2",
        "FixedLengthRecordReader",
        "FixedLengthRecordReaderV2",
        "TextLineDataset",
        "TFRecordDataset",
        "TFRecordDatasetV2",
        "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2",
        "SnapshotDataset",
        "SnapshotDatasetV2",
        "SaveDataset",
        "SaveDatasetV2",
        "LoadDataset",
        "CacheDatasetV2",
        "DatasetToTFRecord",
        "SummaryWriter",
        "CreateSummaryFileWriter",
        "WriteSummary",
    }
)
_NUMPY = {
    "DT_FLOAT": "float32",
    "DT_DOUBLE": "float64",
    "DT_HALF": "float16",
    "DT_INT8": "int8",
    "DT_INT16": "int16",
    "DT_INT32": "int32",
    "DT_INT64": "int64",
    "DT_UINT8": "uint8",
    "DT_UINT16": "uint16",
    "DT_UINT32": "uint32",
    "DT_UINT64": "uint64",
    "DT_BOOL": "bool",
    "DT_STRING": "string",
}


class ConvertError(Exception):
    def __init__(
        self, message: str, unsupported: list[str] | None = None, untrusted: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.unsupported = unsupported or []
        self.untrusted = untrusted or []


def _dims(shape: Any) -> list[int] | None:
    """A TensorShapeProto as a list of sizes (-1 unknown), None for an unknown rank."""
    if shape.unknown_rank:
        return None
    return [int(d.size) for d in shape.dim]


def _tensor_info(info: Any, dtype_name: Any) -> dict[str, Any]:
    return {"dtype": dtype_name(info.dtype), "shape": _dims(info.tensor_shape), "name": info.name}


def _signature_defs(path: Path) -> dict[str, Any]:
    """The signature_def map of the 'serve' meta graph, as recorded (names, dtypes, shapes, methods)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    model.ParseFromString((path / "saved_model.pb").read_bytes())
    graphs = [g for g in model.meta_graphs if "serve" in g.meta_info_def.tags] or list(model.meta_graphs)
    if not graphs:
        raise ConvertError("the SavedModel has no meta graph")
    defs = {}
    for name, sig in sorted(graphs[0].signature_def.items()):
        if name.startswith("__"):  # __saved_model_init_op and the like: not callable signatures
            continue
        defs[name] = {
            "method_name": sig.method_name or PREDICT,
            "inputs": {k: _tensor_info(v, types_pb2.DataType.Name) for k, v in sorted(sig.inputs.items())},
            "outputs": {k: _tensor_info(v, types_pb2.DataType.Name) for k, v in sorted(sig.outputs.items())},
        }
    if not defs:
        raise ConvertError("the SavedModel has no serving signature (signature_def is empty)")
    return defs


def _side_effect_ops(path: Path) -> list[str]:
    """Ops anywhere in the SavedModel (graphs and function libraries) that touch files or run
    Python when TensorFlow loads or runs the model: a SavedModel is a program, and its init op
    runs at load, before any conversion."""
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    model.ParseFromString((path / "saved_model.pb").read_bytes())
    found = set()
    for graph in model.meta_graphs:
        nodes = [*graph.graph_def.node]
        for function in graph.graph_def.library.function:
            nodes.extend(function.node_def)
        for node in nodes:
            if node.op in _SIDE_EFFECTS:
                found.add(node.op)
            elif node.op == "PrintV2" and node.attr["output_stream"].s.startswith(b"file://"):
                found.add("PrintV2 (to a file)")
    return sorted(found)


def _parse_node(graph_def: Any) -> Any:
    nodes = [n for n in graph_def.node if n.op in _PARSE_OPS]
    return nodes[0] if len(nodes) == 1 else None


def _example_features(tf: Any, frozen: Any, graph_def: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The dense features a classify/regress graph parses from its tf.Example input, and the names
    of the parse op's tensors that carry them (the converted graph's inputs)."""
    node = _parse_node(graph_def)
    if node is None:
        raise ConvertError(
            "this classify/regress signature does not parse its tf.Example input with one "
            "ParseExample op, so its features cannot be served without TensorFlow"
        )
    num_sparse = (
        int(node.attr["num_sparse"].i)
        if "num_sparse" in node.attr
        else len(node.attr["sparse_types"].list.type)
    )
    ragged = len(node.attr["ragged_value_types"].list.type) if "ragged_value_types" in node.attr else 0
    if num_sparse or ragged:
        raise ConvertError(
            "this signature parses sparse or ragged tf.Example features, which ONNX cannot take"
        )
    dtypes = [tf.dtypes.as_dtype(t).name for t in node.attr["Tdense"].list.type]
    shapes = [_dims(s) for s in node.attr["dense_shapes"].list.shape]
    n = len(dtypes)
    inputs = [i.split(":")[0].lstrip("^") for i in node.input]
    if node.op == "ParseExampleV2":  # serialized, names, sparse_keys, dense_keys, ragged_keys, defaults…
        keys_tensor, default_tensors = inputs[3], inputs[5 : 5 + n]
    else:  # serialized, names, sparse_keys…, dense_keys…, defaults…
        keys_tensor, default_tensors = None, inputs[2 + num_sparse + n : 2 + num_sparse + 2 * n]
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        if keys_tensor is not None:
            keys = [k.decode() for k in session.run(keys_tensor + ":0").tolist()]
        else:
            keys = [
                k.decode()
                for k in (session.run(t + ":0") for t in inputs[2 + num_sparse : 2 + num_sparse + n])
            ]
        defaults = [session.run(t + ":0") for t in default_tensors]
    features = []
    for key, dtype, shape, default in zip(keys, dtypes, shapes, defaults, strict=True):
        if dtype not in ("float32", "int64", "string"):
            raise ConvertError(f"feature {key!r} has type {dtype}, which tf.Example cannot hold")
        value = None
        if default.size:
            value = [x.decode() if isinstance(x, bytes) else x for x in np.asarray(default).ravel().tolist()]
        features.append({"key": key, "dtype": dtype, "shape": shape or [], "default": value})
    offset = 3 * num_sparse
    return features, [f"{node.name}:{offset + i}" for i in range(n)]


def _sample(dtype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dims = [2 if d < 0 else d for d in shape]
    if dtype in ("float16", "float32", "float64", "bfloat16"):
        return rng.normal(size=dims).astype("float32" if dtype == "bfloat16" else dtype)
    if dtype.startswith(("int", "uint")):
        return rng.integers(0, 5, size=dims).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, size=dims).astype(bool)
    if dtype == "string":
        return np.array([f"s{i}".encode() for i in range(int(np.prod(dims)))], dtype=object).reshape(dims)
    raise ConvertError(f"inputs of type {dtype} are not supported")


def _unsupported(model: Any) -> list[str]:
    """The ops tf2onnx left unconverted: nodes of no ONNX (or onnxruntime contrib) domain's schema."""
    import onnx

    missing = set()
    for node in model.graph.node:
        domain = node.domain or ""
        if domain in ("", "ai.onnx"):
            if not onnx.defs.has(node.op_type, ""):
                missing.add(node.op_type)
        elif domain not in ("com.microsoft", "ai.onnx.ml", "ai.onnx.contrib"):
            missing.add(f"{domain}.{node.op_type}")
    return sorted(missing)


def _rename(model: Any, inputs: dict[str, str], outputs: dict[str, str]) -> None:
    """Give the ONNX graph's inputs and outputs the signature's names (TF tensors are 'x:0')."""
    import onnx

    graph = model.graph
    for value in graph.input:
        new = inputs.get(value.name)
        if new is None:
            continue
        old = value.name
        value.name = new
        for node in graph.node:
            node.input[:] = [new if i == old else i for i in node.input]
            for attr in node.attribute:
                for sub in [attr.g, *attr.graphs]:
                    for inner in sub.node:
                        inner.input[:] = [new if i == old else i for i in inner.input]
    for value in graph.output:
        new = outputs.get(value.name)
        if new is None or new == value.name:
            continue
        graph.node.append(
            onnx.helper.make_node("Identity", [value.name], [new], name=f"signature_output_{new}")
        )
        value.name = new


def _check_parity(expected: dict[str, Any], got: dict[str, np.ndarray], signature: str) -> float:
    worst = 0.0
    for name, value in expected.items():
        have = got[name]
        want = np.asarray(value)
        if want.dtype == object or want.dtype.kind in "SU":
            same = want.shape == have.shape and all(
                (a.decode() if isinstance(a, bytes) else str(a))
                == (b.decode() if isinstance(b, bytes) else str(b))
                for a, b in zip(want.ravel(), have.ravel(), strict=True)
            )
            if not same:
                raise ConvertError(
                    f"signature {signature!r}: the ONNX conversion disagrees with TensorFlow on "
                    f"output {name!r} (text values differ on the sample inputs); the push was refused"
                )
            continue
        if want.shape != have.shape:
            raise ConvertError(
                f"signature {signature!r}: the ONNX conversion gives output {name!r} shape "
                f"{list(have.shape)} where TensorFlow gives {list(want.shape)}; the push was refused"
            )
        if want.size:
            diff = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64))))
            if not _within(have, want):
                raise ConvertError(
                    f"signature {signature!r}: the ONNX conversion disagrees with TensorFlow on "
                    f"output {name!r} (max |Δ| = {diff:.3g} on the sample inputs, tolerance "
                    f"{PARITY_ATOL:g} + {PARITY_RTOL:g}·|x|); the push was refused"
                )
            worst = max(worst, diff)
    return worst


def _within(have: np.ndarray, want: np.ndarray) -> bool:
    """|have - want| <= atol + rtol·|want| everywhere, NaN matching NaN and an infinity itself. As
    numpy.allclose, except that equal finite values pass only within the tolerance too: numpy 2
    lets them through whatever it is, so a tolerance below zero (how the tests force a
    disagreement) passed a conversion that matched TensorFlow bit for bit."""
    have, want = have.astype(np.float64), want.astype(np.float64)
    close = np.abs(have - want) <= PARITY_ATOL + PARITY_RTOL * np.abs(want)
    close |= np.isnan(have) & np.isnan(want)
    close |= np.isinf(want) & (have == want)
    return bool(close.all())


def _examples(tf: Any, features: list[dict[str, Any]], arrays: dict[str, np.ndarray], rows: int) -> Any:
    serialized = []
    for r in range(rows):
        feature = {}
        for spec in features:
            flat = arrays[spec["key"]][r].ravel().tolist()
            if spec["dtype"] == "float32":
                feature[spec["key"]] = tf.train.Feature(float_list=tf.train.FloatList(value=flat))
            elif spec["dtype"] == "int64":
                feature[spec["key"]] = tf.train.Feature(int64_list=tf.train.Int64List(value=flat))
            else:
                feature[spec["key"]] = tf.train.Feature(bytes_list=tf.train.BytesList(value=flat))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        serialized.append(example.SerializeToString())
    return tf.constant(serialized)


def convert(source: Path, out: Path, trust: bool = False) -> dict[str, Any]:  # noqa: PLR0915
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    defs = _signature_defs(source)
    risky = _side_effect_ops(source)
    if risky and not trust:
        raise ConvertError(
            f"the SavedModel holds ops that read or write files or run Python when TensorFlow "
            f"loads or runs it ({', '.join(risky)}); push it with --trust only if you trust it",
            untrusted=risky,
        )
    try:
        loaded = tf.saved_model.load(str(source), tags=["serve"])
    except Exception as exc:
        raise ConvertError(f"TensorFlow cannot load the SavedModel: {_line(exc)}") from exc
    rng = np.random.default_rng(0)
    unsupported: set[str] = set()
    for index, (name, sig) in enumerate(defs.items()):
        fn = loaded.signatures.get(name)
        if fn is None:
            raise ConvertError(f"signature {name!r} is in saved_model.pb but TensorFlow cannot call it")
        frozen = convert_variables_to_constants_v2(fn)
        graph_def = frozen.graph.as_graph_def()
        outputs = fn.structured_outputs
        out_aliases = list(outputs) if isinstance(outputs, dict) else []
        flat = tf.nest.flatten(outputs)
        if not out_aliases or len(flat) != len(frozen.outputs):
            raise ConvertError(f"signature {name!r} does not return a dict of named tensors")
        # tf.nest flattens a dict in sorted key order, as the frozen function's outputs are.
        out_aliases = sorted(out_aliases)
        out_names = [t.name for t in frozen.outputs]
        # classify/regress signatures, and predict ones fed serialized Examples (as estimators
        # export them): one string input, parsed by one ParseExample op.
        strings = [a for a, info in sig["inputs"].items() if info["dtype"] == "DT_STRING"]
        example_based = sig["method_name"] in (CLASSIFY, REGRESS) or (
            len(sig["inputs"]) == 1 and len(strings) == 1 and _parse_node(graph_def) is not None
        )
        if example_based:
            features, in_names = _example_features(tf, frozen, graph_def)
            in_aliases = [f["key"] for f in features]
            sig["features"] = features
        else:
            args, kwargs = fn.structured_input_signature
            if args or set(kwargs) != set(sig["inputs"]):
                raise ConvertError(f"signature {name!r} does not take its inputs by name")
            # The function's inputs are its keyword arguments flattened (sorted by name), then
            # the captured variables.
            in_aliases = sorted(kwargs)
            in_names = [t.name for t in frozen.inputs[: len(in_aliases)]]
        try:
            with _quiet():
                model, _ = tf2onnx.convert.from_graph_def(
                    graph_def, input_names=in_names, output_names=out_names, opset=OPSET
                )
        except Exception as exc:
            raise ConvertError(f"tf2onnx cannot convert signature {name!r}: {_line(exc)}") from exc
        missing = _unsupported(model)
        if missing:
            unsupported.update(missing)
            continue
        clash = sorted(set(in_aliases) & set(out_aliases))
        if clash:
            raise ConvertError(
                f"signature {name!r} names an input and an output alike ({', '.join(clash)}), which "
                "an ONNX graph cannot hold; rename the output and push again"
            )
        _rename(
            model,
            dict(zip(in_names, in_aliases, strict=True)),
            dict(zip(out_names, out_aliases, strict=True)),
        )
        target = out / f"{index}.onnx"
        import onnx

        onnx.save_model(model, str(target))
        sig["file_index"] = index
        sig["parity_max_abs_diff"] = _parity(tf, fn, sig, target, in_aliases, example_based, rng, name)
    if unsupported:
        ops = ", ".join(sorted(unsupported))
        raise ConvertError(
            f"the SavedModel uses TensorFlow ops that tf2onnx cannot convert to ONNX: {ops}; "
            "replace them in the model (or export it to ONNX yourself) and push again",
            sorted(unsupported),
        )
    return {
        "signatures": defs,
        "versions": {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__},
        "side_effect_ops": risky,
    }


def _parity(
    tf: Any,
    fn: Any,
    sig: dict[str, Any],
    target: Path,
    in_aliases: list[str],
    example_based: bool,
    rng: np.random.Generator,
    name: str,
) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    if example_based:
        feeds = {f["key"]: _sample(f["dtype"], [-1, *f["shape"]], rng) for f in sig["features"]}
        rows = 2
        alias = next(iter(sig["inputs"]))
        expected = fn(**{alias: _examples(tf, sig["features"], feeds, rows)})
        onnx_feeds = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in feeds.items()}
    else:
        feeds = {}
        for alias in in_aliases:
            info = sig["inputs"][alias]
            if info["shape"] is None:
                raise ConvertError(
                    f"signature {name!r}: input {alias!r} has an unknown rank; give it a shape"
                )
            feeds[alias] = _sample(_NUMPY.get(info["dtype"], info["dtype"]), info["shape"], rng)
        expected = fn(**{k: tf.constant(v) for k, v in feeds.items()})
        onnx_feeds = {k: _text(v) for k, v in feeds.items()}
    got_list = session.run(None, onnx_feeds)
    got = {o.name: v for o, v in zip(session.get_outputs(), got_list, strict=True)}
    return _check_parity({k: v.numpy() for k, v in expected.items()}, got, name)


def _text(arr: np.ndarray) -> np.ndarray:
    """onnxruntime reads str, not bytes, into a string tensor (bytes would become "b'…'")."""
    if arr.dtype != object:
        return arr
    text: np.ndarray = np.vectorize(lambda x: x.decode() if isinstance(x, bytes) else x, otypes=[object])(arr)
    return text


def _line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _quiet:
    """tf2onnx logs every op it handles; the push reports only what went wrong."""

    def __enter__(self) -> None:
        import logging

        logging.disable(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        import logging

        logging.disable(logging.NOTSET)


def main(argv: list[str]) -> int:
    global PARITY_RTOL, PARITY_ATOL
    source, out = Path(argv[0]), Path(argv[1])
    if len(argv) > 2:
        PARITY_RTOL, PARITY_ATOL = float(argv[2]), float(argv[3])
    trust = len(argv) > 4 and argv[4] == "trust"
    try:
        result = convert(source, out, trust)
    except ConvertError as exc:
        result = {"error": str(exc), "unsupported_ops": exc.unsupported, "untrusted_ops": exc.untrusted}
    (out / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # a push converts on the CPU
    sys.exit(main(sys.argv[1:]))
