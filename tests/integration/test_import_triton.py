"""`shipyard import triton DIR`: a real Triton model repository (config.pbtxt, numbered version
folders, ONNX files) imported through the CLI, then served in-process with the batching its
config.pbtxt set. Each bad repository is one line, exit code 2, and leaves the registry as it was.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from import_support import contents, home_with_one_model, run_cli

from shipyard.errors import InsufficientStorageError
from shipyard.importers.triton import import_repository
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.settings import Settings
from tiny_models import tiny_onnx

IRIS_CONFIG = """
# Triton's own comment syntax, and settings Shipyard does not read: they must not break the parse.
name: "iris"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "X"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  { name: "label", data_type: TYPE_INT64, dims: [ ] },
  { name: "probabilities", data_type: TYPE_FP32, dims: [ 3 ] }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 64 }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }
model_warmup [
  {
    name: "zeros"
    batch_size: 1
    inputs { key: "X" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
  }
]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
version_policy: { all: { } }
"""

# No batching in Triton (max_batch_size 0: dims are the whole shape) and no dynamic_batching.
PLAIN_CONFIG = """
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
"""


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """Two models: `iris` with versions 1 and 3 (a gap, as Triton allows), `plain` with version 1."""
    root = tmp_path / "models"
    for name, config, versions in (("iris", IRIS_CONFIG, (1, 3)), ("plain", PLAIN_CONFIG, (1,))):
        (root / name).mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        for number in versions:
            (root / name / str(number)).mkdir()
            (root / name / str(number) / "model.onnx").write_bytes(tiny_onnx(f"{name} {number}"))
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return home_with_one_model(tmp_path)


def test_import_pushes_each_version_in_order_with_its_batching(
    repository: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, home, "import", "triton", repository, "--json")
    assert code == 0, err
    pushed = json.loads(out)
    assert [(v["ref"], v["tags"]["triton_version"]) for v in pushed] == [
        ("iris:1", "1"),
        ("iris:2", "3"),
        ("plain:1", "1"),
    ]
    with Registry(settings=Settings.load(home=home)) as registry:
        iris = registry.resolve("iris:2")
        assert iris.serving == {
            "max_batch_size": 16,
            "max_batch_delay_ms": 0.5,
            "preferred_batch_sizes": [4, 8],
        }
        assert iris.format == "onnx" and iris.tags["source"] == "triton"
        assert [t.name for t in iris.signature.inputs] == ["X"]
        assert registry.resolve("plain").serving == {"max_batch_size": 1, "max_batch_delay_ms": 0.0}


def test_one_model_folder_imports_on_its_own(
    repository: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, home, "import", "triton", repository / "iris")
    assert code == 0, err
    assert out.splitlines()[0].startswith("imported iris:1 (Triton version 1) sha256:")
    assert contents(home) == [("existing", 1), ("iris", 1), ("iris", 2)]


def test_imported_versions_serve_with_the_batching_of_their_config(
    repository: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, home, "import", "triton", repository)[0] == 0
    settings = Settings.load(home=home)

    async def scenario() -> dict[str, Any]:
        app = create_app(settings, ["iris", "plain"])
        async with app.app.router.lifespan_context(app.app):
            await asyncio.wait_for(asyncio.shield(app.state.loading), 60)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as client:
                body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 4], "data": [1.0] * 8}]}
                infer = await client.post("/v2/models/iris/infer", json=body)
                return {
                    "infer": infer.json(),
                    "iris": (await client.get("/v2/models/iris/config")).json(),
                    "plain": (await client.get("/v2/models/plain/config")).json(),
                }

    answers = asyncio.run(scenario())
    assert answers["infer"]["model_version"] == "2"
    assert {o["name"]: o["shape"] for o in answers["infer"]["outputs"]} == {
        "label": [2],
        "probabilities": [2, 3],
    }
    iris = answers["iris"]
    assert iris["max_batch_size"] == 16
    assert iris["dynamic_batching"] == {"max_queue_delay_microseconds": 500, "preferred_batch_size": [4, 8]}
    assert iris["input"] == [{"name": "X", "data_type": "TYPE_FP32", "dims": [4]}]
    # Triton's max_batch_size 0: one request per run, and nothing held back.
    plain = answers["plain"]
    assert plain["max_batch_size"] == 1
    assert plain["dynamic_batching"] == {"max_queue_delay_microseconds": 0}


def _set_config(name: str, text: str) -> Callable[[Path], int]:
    return lambda root: (root / name / "config.pbtxt").write_text(text)


BAD_REPOSITORIES: dict[str, tuple[Callable[[Path], Any], str]] = {
    "missing config.pbtxt": (
        lambda root: (root / "plain" / "config.pbtxt").unlink(),
        "plain/config.pbtxt is missing: every Triton model folder needs one",
    ),
    "malformed config.pbtxt": (
        _set_config("plain", 'backend: "onnxruntime"\nmax_batch_size: 0\ninput [ { name: "X" dims: [ 4 }\n'),
        "plain/config.pbtxt, line 3: ",
    ),
    "unknown data type": (
        _set_config("plain", 'backend: "onnxruntime"\n\ninput [ { name: "X" data_type: TYPE_FLOAT } ]\n'),
        "plain/config.pbtxt, line 3: 'input [ { name: \"X\" data_type: TYPE_FLOAT } ]': "
        'Enum type "inference.DataType" has no value named TYPE_FLOAT.',
    ),
    "unsupported platform": (
        _set_config("plain", 'platform: "tensorrt_plan"\nmax_batch_size: 8\n'),
        "platform tensorrt_plan is not supported: only ONNX models import",
    ),
    "unsupported backend": (
        _set_config("plain", 'backend: "python"\n'),
        "backend python is not supported: only ONNX models import",
    ),
    "dims mismatch": (
        _set_config("iris", IRIS_CONFIG.replace("dims: [ 4 ]\n", "dims: [ 5 ]\n", 1)),
        "Triton model 'iris' version 1: input 'X' has dims [5] in config.pbtxt but [4] after the batch "
        "dimension in model.onnx",
    ),
    "data type mismatch": (
        _set_config("iris", IRIS_CONFIG.replace("TYPE_INT64", "TYPE_INT32")),
        "Triton model 'iris' version 1: output 'label' is TYPE_INT32 in config.pbtxt but TYPE_INT64 in "
        "model.onnx",
    ),
    "unknown tensor": (
        _set_config("iris", IRIS_CONFIG.replace('name: "X"', 'name: "input"')),
        "Triton model 'iris' version 1: input 'input' of config.pbtxt is not in model.onnx (its inputs: X)",
    ),
    "missing model file in a later version": (
        lambda root: (root / "iris" / "3" / "model.onnx").unlink(),
        "Triton model 'iris' version 3: ",
    ),
    "not an ONNX file": (
        lambda root: (root / "iris" / "3" / "model.onnx").write_bytes(b"\x80\x04K\x01."),
        "Triton model 'iris' version 3: ",
    ),
}


@pytest.mark.parametrize("case", BAD_REPOSITORIES)
def test_a_bad_repository_is_one_line_and_imports_nothing(
    case: str, repository: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    break_it, expected = BAD_REPOSITORIES[case]
    break_it(repository)
    before = contents(home)
    code, out, err = run_cli(capsys, home, "import", "triton", repository)
    assert code == 2, err
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert contents(home) == before == [("existing", 1)]


def test_a_folder_that_is_no_repository_is_refused(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, home, "import", "triton", tmp_path / "empty")
    assert code == 2 and "is not a Triton model repository" in err
    code, _, err = run_cli(capsys, home, "import", "triton", tmp_path / "nowhere")
    assert code == 2 and "does not exist" in err


def test_a_push_limit_refuses_before_anything_is_stored(
    repository: Path, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (repository / "iris" / "3" / "model.onnx").write_bytes(tiny_onnx("a longer doc string " * 20))
    limit = (repository / "iris" / "1" / "model.onnx").stat().st_size
    monkeypatch.setenv("SHIPYARD_PUSH__MAX_FILE_BYTES", str(limit))
    code, _, err = run_cli(capsys, home, "import", "triton", repository)
    assert code == 2 and "Triton model 'iris' version 3: model file model.onnx is" in err, err
    assert "SHIPYARD_PUSH__MAX_FILE_BYTES" in err
    assert contents(home) == [("existing", 1)]


class _FullAfterOnePush(Registry):
    """A registry whose store fills up after one push: what the checks cannot foresee."""

    pushes = 0

    def push(self, *args: Any, **kwargs: Any) -> Any:
        self.pushes += 1
        if self.pushes > 1:
            raise InsufficientStorageError("no space left on the artifact store")
        return super().push(*args, **kwargs)


def test_a_push_that_fails_midway_takes_back_the_versions_before_it(repository: Path, home: Path) -> None:
    full = _FullAfterOnePush(settings=Settings.load(home=home))
    with full as registry:
        with pytest.raises(InsufficientStorageError):
            import_repository(registry, repository)
        assert full.pushes == 2
    assert contents(home) == [("existing", 1)]
