"""A corpus of malicious artifacts, generated here, each pushed without --trust through the CLI:
every one is refused with one `error:` line and a documented exit code, and none has a side
effect: the canary file is never written, the local listener gets no connection, and an audit
hook in the pushing process sees no process, exec or socket event.

The pushes run in one child process, because audit hooks cannot be removed once installed."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import socket
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_registry_safety import _child_far_away, _patched_tree, _state, _tuple_node, _with_node

from shipyard.registry import Registry

# The pushing child: an audit hook records the events a payload would cause, then each artifact
# is pushed through the CLI entry point in-process; one JSON line per push on stdout.
WORKER = r"""
import contextlib, io, json, os, platform, sys
platform.processor()  # cached now: libraries that ask later (via `uname -p`) spawn nothing
canary, listing = sys.argv[1], sys.argv[2]
seen = []
WATCHED = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.Popen",
           "socket.connect")
OWN = (["git", "rev-parse", "HEAD"], ["git", "status", "--porcelain", "--untracked-files=no"])
def own(argv):  # Shipyard's own children: the isolated load check, the pushed commit's git
    return "shipyard.packaging.isolated" in argv or argv in OWN
def hook(event, args):
    if event.startswith(WATCHED):
        if event == "subprocess.Popen" and own([str(a) for a in args[1] or ()]):
            return
        seen.append(f"{event} {str(args)[:120]}")
    elif event == "open" and args and str(args[0]) == canary:
        seen.append(f"open {args[0]}")
sys.addaudithook(hook)
from shipyard.cli.main import main
for name, path in json.load(open(listing)):
    seen.clear()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["push", "victim", path])
    print(json.dumps({"name": name, "code": code, "stderr": err.getvalue(), "events": list(seen)}),
          flush=True)
"""

# Exit codes a refusal may end with: invalid input (2) or untrusted (5).
REFUSED_CODES = {2, 5}


class _Reducer:
    """A pickle payload: unpickling calls `func(*args)`."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _payloads(canary: Path, port: int) -> dict[str, Any]:
    return {
        "system": _Reducer(os.system, f"touch {canary}"),
        "exec": _Reducer(exec, f"open({str(canary)!r}, 'w').write('owned')"),
        "eval": _Reducer(eval, f"__import__('os').system('touch {canary}')"),
        "socket": _Reducer(socket.create_connection, ("127.0.0.1", port)),
        "popen": _Reducer(subprocess.Popen, ["touch", str(canary)]),
    }


def _zip_with(source: Path, target: Path, extra: dict[str, bytes], link: str | None = None) -> Path:
    """A copy of a zip archive with extra entries; `link` names one stored as a symbolic link."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        for name, data in extra.items():
            info = zipfile.ZipInfo(name)
            if name == link:
                info.external_attr = (0o120777 << 16) | 0x10
            zout.writestr(info, data)
    return target


def _zip_bomb(source: Path, target: Path, member: str, mib: int = 100) -> Path:
    """`source` with one member replaced by `mib` MiB of zeros: ~100 KiB on disk."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename != member:
                zout.writestr(info, zin.read(info))
        with zout.open(member, "w") as fh:
            chunk = bytes(1 << 20)
            for _ in range(mib):
                fh.write(chunk)
    return target


def _truncated(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return target


def _flipped_magic(source: Path, target: Path, offset: int) -> Path:
    data = bytearray(source.read_bytes())
    data[offset] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def _safetensors(header: bytes | dict[str, Any], data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + data


def _hf_folder(root: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 4}))
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return folder


def _onnx_with(make: Callable[[Any, Any], None], target: Path) -> Path:
    """A tiny ONNX graph (Identity of a float input) edited by `make(onnx, graph)`."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([], "g", [x], [y])
    make(onnx, graph)
    if not graph.node:
        graph.node.append(helper.make_node("Identity", ["x"], ["y"]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    target.write_bytes(model.SerializeToString())
    return target


def _external(tensor: Any, location: str) -> None:
    from onnx import TensorProto

    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    tensor.ClearField("raw_data")


def _onnx_corpus(folder: Path) -> dict[str, Path]:
    from onnx import TensorProto, helper, numpy_helper

    def outside_initializer(onnx: Any, graph: Any) -> None:
        weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
        _external(weight, "../../../etc/passwd")
        graph.initializer.append(weight)

    def absolute_initializer(onnx: Any, graph: Any) -> None:
        weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
        _external(weight, "/etc/shadow")
        graph.initializer.append(weight)

    def outside_constant(onnx: Any, graph: Any) -> None:
        value = numpy_helper.from_array(np.ones(4, np.float32), "c")
        _external(value, "../secret.bin")
        graph.node.append(helper.make_node("Constant", [], ["c"], value=value))
        graph.node.append(helper.make_node("Identity", ["x"], ["y"]))

    def outside_sparse(onnx: Any, graph: Any) -> None:
        values = numpy_helper.from_array(np.ones(2, np.float32), "s")
        _external(values, "../../secret.bin")
        indices = numpy_helper.from_array(np.array([0, 3], np.int64), "s_idx")
        graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))

    def constant_of_shape(onnx: Any, graph: Any) -> None:
        shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "shape")
        graph.initializer.append(shape)
        graph.node.append(helper.make_node("ConstantOfShape", ["shape"], ["big"]))
        graph.node.append(helper.make_node("Identity", ["x"], ["y"]))

    def expand(onnx: Any, graph: Any) -> None:
        shape = numpy_helper.from_array(np.array([1 << 16, 1 << 16], np.int64), "shape")
        graph.initializer.append(shape)
        graph.node.append(helper.make_node("Expand", ["x", "shape"], ["y"]))

    def tile(onnx: Any, graph: Any) -> None:
        repeats = numpy_helper.from_array(np.array([1 << 33], np.int64), "repeats")
        graph.initializer.append(repeats)
        graph.node.append(helper.make_node("Tile", ["x", "repeats"], ["y"]))

    def declared_giant(onnx: Any, graph: Any) -> None:
        graph.initializer.append(TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20]))

    def short_raw_data(onnx: Any, graph: Any) -> None:
        graph.initializer.append(
            TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1024], raw_data=bytes(8))
        )

    makers = [
        outside_initializer, absolute_initializer, outside_constant, outside_sparse,
        constant_of_shape, expand, tile, declared_giant, short_raw_data,
    ]  # fmt: skip
    return {f"onnx-{m.__name__}": _onnx_with(m, folder / f"{m.__name__}.onnx") for m in makers}


def _tflite_bytes() -> bytes:
    spec = importlib.util.spec_from_file_location(
        "tflite_builders", Path(__file__).parent / "frameworks" / "test_tflite.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return bytes(module.dense_tflite())


def _pickle_corpus(folder: Path, canary: Path, port: int) -> dict[str, Path]:
    """Code-executing pickles, joblib, cloudpickle and torch.save files."""
    corpus: dict[str, Path] = {}
    for payload, obj in _payloads(canary, port).items():
        for protocol in range(6):
            if payload == "system" or protocol in (0, 2, 5):
                path = folder / f"{payload}-p{protocol}.pkl"
                path.write_bytes(pickle.dumps(obj, protocol=protocol))
                corpus[f"pickle-{payload}-p{protocol}"] = path
    import joblib

    corpus["joblib"] = folder / "evil.joblib"
    joblib.dump(_Reducer(os.system, f"touch {canary}"), corpus["joblib"])
    corpus["joblib-gzip"] = folder / "evil-gz.joblib"
    joblib.dump(_Reducer(os.system, f"touch {canary}"), corpus["joblib-gzip"], compress=3)
    try:
        import cloudpickle
    except ImportError:  # shaped like one: a protocol-5 pickle of the same reducer
        corpus["cloudpickle"] = folder / "evil.cloudpkl"
        corpus["cloudpickle"].write_bytes(pickle.dumps(_Reducer(os.system, f"touch {canary}"), protocol=5))
    else:
        corpus["cloudpickle"] = folder / "evil.cloudpkl"
        corpus["cloudpickle"].write_bytes(cloudpickle.dumps(_Reducer(os.system, f"touch {canary}")))
    import torch

    corpus["torch-save"] = folder / "evil.pt"
    torch.save({"w": _Reducer(os.system, f"touch {canary}")}, corpus["torch-save"])
    corpus["torch-save-legacy"] = folder / "evil-legacy.pt"
    torch.save(
        {"w": _Reducer(os.system, f"touch {canary}")},
        corpus["torch-save-legacy"],
        _use_new_zipfile_serialization=False,
    )
    return corpus


def build_corpus(folder: Path, canary: Path, port: int, sources: dict[str, Path]) -> dict[str, Path]:
    """name → path of every malicious artifact; `sources` holds real onnx, skops, tree, keras,
    h5, tflite files to corrupt."""
    corpus = _pickle_corpus(folder, canary, port)
    corpus["hf-pytorch-model-bin"] = _hf_folder(
        folder, "hf-bin", {"pytorch_model.bin": corpus["torch-save"].read_bytes()}
    )
    skops, tree = sources["skops"], sources["tree"]
    memmap = {
        "__class__": "memmap",
        "__module__": "sklearn.externals.array_api_compat.numpy",
        "__loader__": "ConstructorFromReduceNode",
        "content": _tuple_node(str(canary), "uint8", "w+", 0, (16,)),
    }
    corpus["skops-memmap"] = _with_node(skops, folder / "memmap.skops", memmap)
    system = {"__class__": "system", "__module__": "os", "__loader__": "ObjectNode"}
    corpus["skops-os-system"] = _with_node(skops, folder / "system.skops", system)
    corpus["skops-crafted-tree"] = _patched_tree(tree, folder / "tree.skops", _child_far_away)
    for kind in ("skops", "keras"):
        source = sources[kind]
        corpus[f"{kind}-zip-slip"] = _zip_with(source, folder / f"slip.{kind}", {"../../escape.txt": b"x"})
        corpus[f"{kind}-zip-absolute"] = _zip_with(source, folder / f"abs.{kind}", {"/tmp/escape.txt": b"x"})
        corpus[f"{kind}-zip-symlink"] = _zip_with(
            source, folder / f"link.{kind}", {"leak": b"/etc/passwd"}, link="leak"
        )
    corpus["skops-bomb"] = _zip_bomb(skops, folder / "bomb.skops", "schema.json")
    corpus["keras-bomb"] = _zip_bomb(sources["keras"], folder / "bomb.keras", "model.weights.h5")
    linked = _hf_folder(folder, "hf-link", {})
    (linked / "tokenizer.json").symlink_to(canary.parent / "secret.txt")
    corpus["folder-symlink"] = linked
    climbing = _hf_folder(folder, "hf-climb", {"model.safetensors": _safetensors({})})
    (climbing / "modules.json").write_text(
        json.dumps(
            [{"idx": 0, "name": "1", "path": "../../", "type": "sentence_transformers.models.Pooling"}]
        )
    )
    corpus["folder-dotdot"] = climbing
    corpus.update(_onnx_corpus(folder))
    four = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    bad_headers = {
        "not-json": _safetensors(b"{not json at all"),
        "huge-header": _safetensors(b"{}", length=1 << 40),
        "past-end": _safetensors({"w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 1 << 32]}}),
        "overlap": _safetensors(
            {**four, "v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16)
        ),
        "bad-dtype": _safetensors(
            {"w": {"dtype": "PY_OBJECT", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)
        ),
    }
    for name, content in bad_headers.items():
        corpus[f"safetensors-{name}"] = _hf_folder(folder, f"st-{name}", {"model.safetensors": content})
    bomb = _hf_folder(folder, "tokenizer-bomb", {"model.safetensors": _safetensors(four, bytes(16))})
    with open(bomb / "tokenizer.json", "wb") as fh:  # sparse: 65 MiB declared, nothing on disk
        fh.truncate(65 << 20)
    corpus["tokenizer-bomb"] = bomb
    for kind, offset in (("onnx", 0), ("skops", 0), ("keras", 0), ("h5", 0), ("tflite", 4)):
        source = sources[kind]
        corpus[f"{kind}-truncated"] = _truncated(source, folder / f"truncated-{source.name}")
        corpus[f"{kind}-flipped-magic"] = _flipped_magic(source, folder / f"flipped-{source.name}", offset)
    corpus["safetensors-truncated"] = _hf_folder(
        folder, "st-truncated", {"model.safetensors": _safetensors(four, bytes(16))[:-5]}
    )
    return corpus


def build_sources(folder: Path) -> dict[str, Path]:
    """Real, valid files of each format, for the corruptions to start from."""
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    from shipyard.runtimes.keras import import_keras

    keras = import_keras()
    x, y = load_iris(return_X_y=True)
    sources = {
        "skops": folder / "logreg.skops",
        "tree": folder / "tree.skops",
        "keras": folder / "model.keras",
        "h5": folder / "model.h5",
        "tflite": folder / "model.tflite",
    }
    sio.dump(LogisticRegression(max_iter=300).fit(x, y), sources["skops"])
    sio.dump(DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y), sources["tree"])
    inputs = keras.Input(shape=(4,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3, name="probs")(inputs))
    with warnings.catch_warnings():  # Keras' torch backend trips a numpy 2 deprecation,
        warnings.simplefilter("ignore")  # and warns that HDF5 is a legacy format
        model.save(sources["keras"])
        model.save(sources["h5"])
    sources["tflite"].write_bytes(_tflite_bytes())
    sources["onnx"] = _onnx_with(lambda onnx, graph: None, folder / "model.onnx")
    return sources


def push_all(
    corpus: dict[str, Path], env: dict[str, str], canary: Path, listing: Path
) -> list[dict[str, Any]]:
    """Push each artifact through the CLI in one child with the audit hook; one result each."""
    listing.write_text(json.dumps([(name, str(path)) for name, path in corpus.items()]))
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(canary), str(listing)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def summarize(results: list[dict[str, Any]], canary: Path, connections: int) -> tuple[int, int, str]:
    refused = [
        r
        for r in results
        if r["code"] in REFUSED_CODES
        and r["stderr"].startswith("error: ")
        and r["stderr"].count("\n") == 1
        and "Traceback" not in r["stderr"]
    ]
    side_effects = sum(len(r["events"]) for r in results) + int(canary.exists()) + connections
    line = (
        f"malicious corpus: {len(refused)}/{len(results)} refused with one error line, "
        f"side effects {side_effects} (canary written: {canary.exists()}, listener connections: "
        f"{connections}, audit events: {sum(len(r['events']) for r in results)})"
    )
    return len(refused), side_effects, line


@pytest.fixture
def listener() -> Any:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    yield server
    server.close()


def _connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.mark.slow
def test_every_malicious_artifact_is_refused_without_side_effects(
    registry: Registry,
    registry_env: dict[str, str],
    listener: socket.socket,
    tmp_path: Path,
    logreg: Any,
    iris: tuple[np.ndarray, np.ndarray],
) -> None:
    registry.push("victim", logreg, sample_input=iris[0][:2])  # "unchanged" is not "empty"
    pytest.importorskip("tflite")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("keras")
    canary = tmp_path / "canary"
    (tmp_path / "secret.txt").write_text("password")
    sources_dir, corpus_dir = tmp_path / "sources", tmp_path / "corpus"
    sources_dir.mkdir()
    corpus_dir.mkdir()
    corpus = build_corpus(corpus_dir, canary, listener.getsockname()[1], build_sources(sources_dir))
    assert len(corpus) >= 40
    before = _state(registry)

    results = push_all(corpus, registry_env, canary, tmp_path / "listing.json")

    refused, side_effects, line = summarize(results, canary, _connections(listener))
    print(line)
    assert [r["name"] for r in results] == list(corpus)
    not_refused = {r["name"]: (r["code"], r["stderr"]) for r in results if r["code"] not in REFUSED_CODES}
    assert not_refused == {}
    several_lines = {r["name"]: r["stderr"] for r in results if r["stderr"].count("\n") != 1}
    assert several_lines == {}
    assert {r["name"]: r["events"] for r in results if r["events"]} == {}
    assert not canary.exists()
    assert side_effects == 0 and refused == len(results)
    assert _state(registry) == before
