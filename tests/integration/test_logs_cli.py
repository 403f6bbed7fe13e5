"""`shipyard logs` in-process: the prediction log of a model newest first (table, JSON, exports),
references resolved through the registry, and each bad input one line with its exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import shipyard
from shipyard.cli.main import main
from shipyard.monitor.prediction_recorder import PredictionRecorder, Sample
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_onnx


def noted(label: int) -> Sample:
    sample = Sample()
    sample.inputs = {"X": np.full((1, 4), 0.5, dtype=np.float32)}
    sample.outputs = {"label": np.array([label]), "probabilities": np.full((1, 3), 0.25, dtype=np.float32)}
    return sample


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris:1 and iris:2 (iris@prod -> 2) with six logged requests: versions 1, 2, 1, 2, …
    (read-only for the tests: they share it)"""
    home = tmp_path_factory.mktemp("logs-home")
    settings = Settings.load(home=home)
    files = tmp_path_factory.mktemp("logs-models")
    for number in range(3):
        (files / f"{number}.onnx").write_bytes(tiny_onnx(str(number)))
    with Registry(settings=settings) as registry:
        registry.push("iris", files / "0.onnx")
        registry.push("iris", files / "1.onnx", alias="prod")
        registry.push("other", files / "2.onnx")
    recorder = PredictionRecorder.create(settings, worker=1)
    assert recorder is not None
    recorder.start()
    for i in range(6):
        recorder.record(f"r{i}", "iris", 1 + i % 2, "v1", 200 if i else 400, 0.002, noted(i % 3))
    recorder.record("o1", "other", 1, "v2", 200, 0.002, noted(0))
    recorder.close()
    return home


def cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), "logs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_table_newest_first(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, home, "iris", "--limit", "4")
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0] == ["time", "request id", "version", "protocol", "status", "ms", "rows", "outputs"]
    assert [line[1] for line in lines[1:]] == ["r5", "r4", "r3", "r2"]
    assert lines[1][2:7] == ["2", "v1", "200", "2.0", "1"]
    assert lines[1][7] == "label=[2]; probabilities=[[0.25,0.25,0.25]]"


def test_json_and_references_select_versions(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, home, "iris@prod", "--json", "--since", "1h")
    assert code == 0
    entries = json.loads(out)
    assert [e["request_id"] for e in entries] == ["r5", "r3", "r1"]
    assert {e["version"] for e in entries} == {2} and entries[0]["worker"] == 1
    assert entries[0]["summary"]["outputs"]["label"]["values"] == [2]
    code, out, _ = cli(capsys, home, "iris:1", "--json")
    assert [e["request_id"] for e in json.loads(out)] == ["r4", "r2", "r0"]
    assert json.loads(out)[-1]["status"] == 400
    # The Python API reads the same log, and finds entries by request id.
    assert [e.request_id for e in shipyard.predictions("iris", limit=2, home=home)] == ["r5", "r4"]
    assert [e.model for e in shipyard.lookup_predictions(["o1", "r0", "gone"], home=home)] == [
        "other",
        "iris",
    ]


def test_exports_jsonl_and_parquet(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, home, "iris", "--export", str(tmp_path / "log.jsonl"))
    assert (code, out.strip()) == (0, f"exported 6 entries of iris to {tmp_path / 'log.jsonl'}")
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["request_id"] for line in lines] == ["r5", "r4", "r3", "r2", "r1", "r0"]
    pq = pytest.importorskip("pyarrow.parquet")
    assert cli(capsys, home, "iris", "--export", str(tmp_path / "log.parquet"))[0] == 0
    table = pq.read_table(tmp_path / "log.parquet")
    assert table.column("request_id").to_pylist() == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert json.loads(table.column("summary")[0].as_py())["rows"] == 1
    assert str(table.schema.field("time").type) == "timestamp[ms, tz=UTC]"


def test_nothing_logged_says_so(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, home, "iris", "--since", "2099-01-01")
    assert (code, out, err.strip()) == (0, "", "no logged requests for iris since 2099-01-01")


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["nope"], 3, "error: no model named 'nope' in the registry (models: iris, other)"),
        (["iris:9"], 3, "error: model 'iris' has no version 9"),
        (["iris@nowhere"], 3, "error: model 'iris' has no alias 'nowhere'"),
        (["Bad Name"], 2, "error: invalid model name 'Bad Name'"),
        (["iris", "--since", "yesterday"], 2, "error: --since expects a duration such as 30m, 1h, 2d"),
        (
            ["iris", "--since", "30d"],
            2,
            "error: the prediction log keeps 7d (setting prediction_log.max_age_s)",
        ),
        (["iris", "--export", "log.csv"], 2, "error: cannot export to 'log.csv': name a .parquet or .jsonl"),
        (["iris", "--export", "/no/such/dir/log.jsonl"], 2, "error: cannot write '/no/such/dir/log.jsonl'"),
        (["iris", "--limit", "0"], 2, "error: Invalid value for '--limit'"),
    ],
    ids=["model", "version", "alias", "ref", "since", "retention", "format", "folder", "limit"],
)
def test_bad_input_is_one_line_and_its_exit_code(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str], exit_code: int, message: str
) -> None:
    code, out, err = cli(capsys, home, *args)
    assert (code, out) == (exit_code, "")
    assert err.startswith(message) and err.count("\n") == 1, err


def test_parquet_without_pyarrow_names_the_extra(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an install without the extra sees
    code, _, err = cli(capsys, home, "iris", "--export", str(tmp_path / "log.parquet"))
    assert code == 8
    assert err.strip() == (
        "error: exporting the prediction log as Parquet needs the 'pyarrow' package; "
        "install it with `pip install 'shipyard[parquet]'`"
    )
