"""TensorFlow SavedModels pushed through the CLI, converted to ONNX, and served on TF Serving's
REST API, answers checked against TensorFlow's own outputs.

TensorFlow runs only in child processes (the SavedModels and TensorFlow's reference answers are
made by one child here; the push converts in its own), never beside torch in the test process.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from import_support import contents, home_with_one_model, run_cli

from http_errors import assert_error
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.settings import Settings

# Looked for, not imported: TensorFlow loaded into a pytest worker brings its own protobuf and absl,
# which crashed grpc_tools' protoc in a later test on the same worker (TensorFlow runs in children).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
        reason="TensorFlow and tf2onnx are not installed: pip install 'shipyard[tensorflow]'",
    ),
]

X = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [0.0, 3.0, 1.0]]
K = [1, 0, 4]
EXAMPLES = [{"a": [0.5, -1.0], "b": 2.0}, {"a": [1.5, 0.25]}]  # the second takes b's default

# Run in a child: builds the SavedModels and records TensorFlow's answers on the inputs above.
_BUILD = textwrap.dedent(
    """
    import base64, json, sys
    import numpy as np
    import tensorflow as tf

    out, X, K, EXAMPLES = sys.argv[1], *json.loads(sys.argv[2])
    answers = {}

    class TwoInOut(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.random.stateless_normal([3, 2], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None], tf.int64)])
        def predict(self, x, k):
            y = tf.matmul(x, self.w)
            return {"scores": tf.nn.softmax(y), "total": tf.reduce_sum(x, axis=1) + tf.cast(k, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def double(self, x):
            return {"doubled": 2.0 * x}

    m = TwoInOut()
    tf.saved_model.save(m, out + "/two_io", signatures={"serving_default": m.predict, "double": m.double})
    got = m.predict(tf.constant(X, tf.float32), tf.constant(K, tf.int64))
    answers["two_io"] = {k: v.numpy().tolist() for k, v in got.items()}

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def f(self, image_bytes):
            return {"echo_bytes": tf.identity(image_bytes)}

    e = Echo()
    tf.saved_model.save(e, out + "/echo", signatures={"serving_default": e.f})

    class Fft(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def f(self, x):
            return {"y": tf.math.real(tf.signal.fft(tf.cast(x, tf.complex64)))}

    f = Fft()
    tf.saved_model.save(f, out + "/fft", signatures={"serving_default": f.f})

    class Reads(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def f(self, path):
            return {"content": tf.map_fn(tf.io.read_file, path)}

    r = Reads()
    tf.saved_model.save(r, out + "/reads", signatures={"serving_default": r.f})

    # classify and regress signatures as TF Serving knows them: serialized tf.Example in.
    def examples_model(path, default):
        g = tf.Graph()
        with g.as_default():
            serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
            feats = tf.io.parse_example(serialized, {
                "a": tf.io.FixedLenFeature([2], tf.float32),
                "b": tf.io.FixedLenFeature([], tf.float32, default_value=0.5),
            })
            w = tf.constant([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]])
            scores = tf.nn.softmax(tf.matmul(feats["a"], w) + tf.expand_dims(feats["b"], 1))
            classes = tf.tile(tf.constant([["cat", "dog", "bird"]]), [tf.shape(scores)[0], 1])
            value = tf.reduce_sum(feats["a"], axis=1, keepdims=True) * 2.0 + feats["b"][:, None]
            cls = tf.compat.v1.saved_model.classification_signature_def(serialized, classes, scores)
            reg = tf.compat.v1.saved_model.regression_signature_def(serialized, value)
            sigs = {"serving_default": reg}
            if default == "classify":
                sigs = {"serving_default": cls, "regress": reg}
            with tf.compat.v1.Session(graph=g) as s:
                builder = tf.compat.v1.saved_model.Builder(path)
                builder.add_meta_graph_and_variables(s, ["serve"], signature_def_map=sigs)
                builder.save()
                protos = []
                for ex in EXAMPLES:
                    feature = {
                        k: tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(v).tolist()))
                        for k, v in ex.items()
                    }
                    protos.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
                c, sc, v = s.run([classes, scores, value], {serialized: protos})
                return {"classes": [[x.decode() for x in row] for row in c.tolist()], "scores": sc.tolist(),
                        "serialized": [base64.b64encode(p).decode() for p in protos],
                        "value": v.ravel().tolist()}

    answers["classify"] = examples_model(out + "/classify", "classify")
    answers["regress"] = examples_model(out + "/regress", "regress")
    with open(out + "/answers.json", "w") as fh:
        json.dump(answers, fh)
    """
)


@dataclass
class Models:
    root: Path
    answers: dict[str, Any]

    def __getitem__(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("savedmodels")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", _BUILD, str(root), json.dumps([X, K, EXAMPLES])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Models(root, json.loads((root / "answers.json").read_text()))


@pytest.fixture(scope="module")
def home(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding the convertible SavedModels, each pushed through the CLI."""
    home = tmp_path_factory.mktemp("home") / "home"
    from shipyard.cli.main import main

    for name in ("two_io", "echo", "classify", "regress"):
        assert main(["--home", str(home), "push", name.replace("_", "-"), str(models[name])]) == 0
    # A TF Serving model base path: numbered version folders, of which the highest is pushed.
    base = models.root / "base"
    shutil.copytree(models["echo"], base / "2")
    shutil.copytree(models["regress"], base / "10")
    assert main(["--home", str(home), "push", "base", str(base)]) == 0
    return home


@pytest.fixture(scope="module")
def answers(home: Path, models: Models) -> dict[str, httpx.Response]:
    """Every request of the serving tests, sent to one in-process server."""
    serialized = [{"b64": b} for b in models.answers["classify"]["serialized"]]
    requests: dict[str, tuple[str, str, Any]] = {
        "rows": (
            "POST",
            "/v1/models/two-io:predict",
            {"instances": [{"x": x, "k": k} for x, k in zip(X, K, strict=True)]},
        ),
        "columns": ("POST", "/v1/models/two-io/versions/1:predict", {"inputs": {"x": X, "k": K}}),
        "named_default": (
            "POST",
            "/v1/models/two-io:predict",
            {"signature_name": "serving_default", "inputs": {"x": X, "k": K}},
        ),
        "label": ("POST", "/v1/models/two-io/labels/production:predict", {"inputs": {"x": X, "k": K}}),
        "echo": ("POST", "/v1/models/echo:predict", {"instances": [{"b64": "aMOpbGxv"}, {"b64": "aGk="}]}),
        "classify": ("POST", "/v1/models/classify:classify", {"examples": EXAMPLES}),
        "classify_context": (
            "POST",
            "/v1/models/classify:classify",
            {"context": {"b": 2.0}, "examples": [{"a": [0.5, -1.0]}]},
        ),
        "regress": ("POST", "/v1/models/regress:regress", {"examples": EXAMPLES}),
        "predict_examples": ("POST", "/v1/models/classify:predict", {"instances": serialized}),
        "predict_examples_columns": (
            "POST",
            "/v1/models/classify:predict",
            {"signature_name": "regress", "inputs": {"inputs": serialized}},
        ),
        "status": ("GET", "/v1/models/two-io", None),
        "metadata": ("GET", "/v1/models/two-io/metadata", None),
        "classify_metadata": ("GET", "/v1/models/classify/versions/1/metadata", None),
        # bad input
        "bad_signature": (
            "POST",
            "/v1/models/two-io:predict",
            {"signature_name": "nope", "inputs": {"x": X, "k": K}},
        ),
        "other_signature": (
            "POST",
            "/v1/models/two-io:predict",
            {"signature_name": "double", "instances": X},
        ),
        "regress_signature": (
            "POST",
            "/v1/models/classify/versions/1:regress",
            {"signature_name": "regress", "examples": EXAMPLES},
        ),
        "bad_input_name": ("POST", "/v1/models/two-io:predict", {"inputs": {"x": X, "kk": K}}),
        "bad_shape": ("POST", "/v1/models/two-io:predict", {"inputs": {"x": [[1.0, 2.0]], "k": [1]}}),
        "classify_predict_only": (
            "POST",
            "/v1/models/two-io:classify",
            {"examples": [{"x": [1.0, 2.0, 3.0]}]},
        ),
        "regress_on_classify": ("POST", "/v1/models/classify:regress", {"examples": EXAMPLES}),
        "missing_feature": ("POST", "/v1/models/classify:classify", {"examples": [{"b": 1.0}]}),
        "both_context": (
            "POST",
            "/v1/models/classify:classify",
            {"context": {"b": 1.0}, "examples": [{"a": [1.0, 2.0], "b": 3.0}]},
        ),
        "bad_example": ("POST", "/v1/models/classify:predict", {"instances": [{"b64": "bm90IGEgcHJvdG8="}]}),
        "not_utf8": ("POST", "/v1/models/echo:predict", {"instances": [{"b64": "AAEC/w=="}]}),
        "bad_label": ("POST", "/v1/models/two-io/labels/nope:predict", {"inputs": {"x": X, "k": K}}),
    }
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.set_alias("two-io", "production", 1)

    async def scenario() -> dict[str, httpx.Response]:
        app = create_app(Settings.load(home=home), ["two-io", "echo", "classify", "regress"])
        async with app.app.router.lifespan_context(app.app):
            await asyncio.wait_for(asyncio.shield(app.state.loading), 120)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as client:
                got = {}
                for key, (method, url, body) in requests.items():
                    got[key] = await client.request(method, url, json=body)
                    await got[key].aread()
                return got

    return asyncio.run(scenario())


def registry_version(home: Path, ref: str) -> Any:
    with Registry(settings=Settings.load(home=home)) as registry:
        return registry.resolve(ref)


def test_push_records_every_signature_as_tf_serving_knows_it(home: Path) -> None:
    with Registry(settings=Settings.load(home=home)) as registry:
        version = registry.resolve("two-io")
        classify = registry.resolve("classify")
    assert version.format == "onnx" and version.framework == "tensorflow"
    assert {"tensorflow", "tf2onnx", "onnxruntime"} <= set(version.library_versions)
    assert [(t.name, t.datatype, t.shape) for t in version.signature.inputs] == [
        ("k", "INT64", (-1,)),
        ("x", "FP32", (-1, 3)),
    ]
    defs = version.extra["tf_serving"]["signature_def"]
    assert version.extra["tf_serving"]["default_signature"] == "serving_default"
    assert set(defs) == {"serving_default", "double"}
    assert defs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert defs["serving_default"]["outputs"]["scores"]["dtype"] == "DT_FLOAT"
    assert defs["serving_default"]["outputs"]["scores"]["shape"] == [-1, 2]
    assert defs["serving_default"]["parity_max_abs_diff"] < 1e-5
    base = registry_version(home, "base")
    assert base.extra["tf_serving"]["signature_def"]["serving_default"]["method_name"] == (
        "tensorflow/serving/regress"
    )
    cdefs = classify.extra["tf_serving"]["signature_def"]
    assert cdefs["serving_default"]["method_name"] == "tensorflow/serving/classify"
    assert cdefs["regress"]["method_name"] == "tensorflow/serving/regress"
    assert [f["key"] for f in cdefs["serving_default"]["features"]] == ["a", "b"]


def test_predict_rows_give_a_dict_per_row_matching_tensorflow(
    answers: dict[str, httpx.Response], models: Models
) -> None:
    response = answers["rows"]
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    want = models.answers["two_io"]
    assert [sorted(r) for r in rows] == [["scores", "total"]] * 3
    np.testing.assert_allclose([r["scores"] for r in rows], want["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["total"] for r in rows], want["total"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["columns", "named_default", "label"])
def test_predict_columns_give_outputs_by_name(
    answers: dict[str, httpx.Response], models: Models, key: str
) -> None:
    response = answers[key]
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    want = models.answers["two_io"]
    np.testing.assert_allclose(outputs["scores"], want["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["total"], want["total"], rtol=1e-5, atol=1e-6)


def test_every_signature_answers_by_name(answers: dict[str, httpx.Response], models: Models) -> None:
    """Signatures beyond serving_default run their own graphs: one output → a value per row."""
    response = answers["other_signature"]
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], 2.0 * np.array(X), rtol=1e-6)
    regress = answers["regress_signature"]
    assert regress.status_code == 200, regress.text
    np.testing.assert_allclose(regress.json()["results"], models.answers["classify"]["value"], rtol=1e-5)


def test_bytes_travel_as_b64(answers: dict[str, httpx.Response]) -> None:
    response = answers["echo"]
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [base64.b64decode(p["b64"]) for p in predictions] == ["héllo".encode(), b"hi"]


def test_classify_gives_label_score_pairs_matching_tensorflow(
    answers: dict[str, httpx.Response], models: Models
) -> None:
    response = answers["classify"]
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    want = models.answers["classify"]
    assert [[pair[0] for pair in row] for row in results] == want["classes"]
    np.testing.assert_allclose([[pair[1] for pair in row] for row in results], want["scores"], rtol=1e-5)
    context = answers["classify_context"].json()["results"]
    np.testing.assert_allclose([pair[1] for pair in context[0]], want["scores"][0], rtol=1e-5)


def test_predict_takes_serialized_examples_where_the_signature_parses_them(
    answers: dict[str, httpx.Response], models: Models
) -> None:
    want = models.answers["classify"]
    rows = answers["predict_examples"]
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert [p["classes"] for p in predictions] == want["classes"]
    np.testing.assert_allclose([p["scores"] for p in predictions], want["scores"], rtol=1e-5)
    columns = answers["predict_examples_columns"]
    assert columns.status_code == 200, columns.text
    np.testing.assert_allclose(np.ravel(columns.json()["outputs"]), want["value"], rtol=1e-5)


def test_regress_gives_one_value_per_example(answers: dict[str, httpx.Response], models: Models) -> None:
    response = answers["regress"]
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["results"], models.answers["regress"]["value"], rtol=1e-5)


def test_status_and_metadata_in_tf_serving_shape(answers: dict[str, httpx.Response]) -> None:
    status = answers["status"].json()
    assert status["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
    metadata = answers["metadata"].json()
    assert metadata["model_spec"] == {"name": "two-io", "signature_name": "", "version": "1"}
    defs = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"serving_default", "double"}
    x = defs["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert x["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}],
        "unknown_rank": False,
    }
    assert defs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    classify = answers["classify_metadata"].json()["metadata"]["signature_def"]["signature_def"]
    assert classify["serving_default"]["method_name"] == "tensorflow/serving/classify"
    assert classify["serving_default"]["inputs"]["inputs"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize(
    ("key", "status", "field", "fragments"),
    [
        ("bad_signature", 400, "signature_name", ("'nope'", "serving_default", "double")),
        ("bad_input_name", 400, "kk", ("unknown input(s) 'kk'", "missing input(s) 'k'")),
        ("bad_shape", 400, "x", ("shape [1, 2]", "expected [?, 3]")),
        ("classify_predict_only", 400, "signature_name", ("tensorflow/serving/predict", ":classify")),
        ("regress_on_classify", 400, "signature_name", ("tensorflow/serving/classify", ":regress")),
        ("missing_feature", 400, "a", ("feature 'a'", "required")),
        ("both_context", 400, "b", ("both context and example 0",)),
        ("bad_label", 404, "label", ("labelled 'nope'",)),
        ("not_utf8", 400, "b64", ("not UTF-8 text",)),
        ("bad_example", 400, "inputs", ("example 0 is not a serialized tf.Example",)),
    ],
)
def test_bad_requests_name_the_field(
    answers: dict[str, httpx.Response], key: str, status: int, field: str, fragments: tuple[str, ...]
) -> None:
    assert_error(answers[key], status, *fragments)
    assert answers[key].json()["field"] == field


def test_unsupported_op_fails_the_push_naming_it(
    models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = home_with_one_model(tmp_path)
    code, _, err = run_cli(capsys, home, "push", "fft", models["fft"])
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "FFT" in line and "tf2onnx cannot convert" in line, err
    assert contents(home) == [("existing", 1)]


def test_file_reading_ops_need_trust(
    models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TensorFlow runs a SavedModel's ops while converting it: ones that touch files need --trust."""
    home = home_with_one_model(tmp_path)
    code, _, err = run_cli(capsys, home, "push", "reads", models["reads"])
    assert code == 5
    assert "ReadFile" in err and "--trust" in err, err
    assert contents(home) == [("existing", 1)]


def test_parity_failure_fails_the_push(
    models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion that disagrees with TensorFlow registers nothing (the tolerance forced below 0)."""
    from shipyard.packaging import tf_savedmodel

    home = home_with_one_model(tmp_path)
    monkeypatch.setattr(tf_savedmodel, "PARITY_ATOL", -1.0)
    code, _, err = run_cli(capsys, home, "push", "two-io", models["two_io"])
    assert code == 2
    assert "disagrees with TensorFlow" in err, err
    assert contents(home) == [("existing", 1)]


@pytest.fixture
def no_tensorflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "tensorflow" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    yield


def test_missing_tensorflow_names_the_extra(
    models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_tensorflow: None
) -> None:
    home = home_with_one_model(tmp_path)
    code, _, err = run_cli(capsys, home, "push", "two-io", models["two_io"])
    assert code == 8
    assert "shipyard[tensorflow]" in err
    assert contents(home) == [("existing", 1)]
