"""The `shipyard` console script exactly as a user runs it: a real process, a temporary home.

Every error must be one line on stderr that starts with `error:`, with a non-zero exit code and
never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.registry import Registry

SHIPYARD = Path(sys.executable).parent / "shipyard"
DIGEST = r"sha256:[0-9a-f]{64}"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


def _env(home: Path, git_ceiling: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env["SHIPYARD_HOME"] = str(home)
    env["GIT_CEILING_DIRECTORIES"] = str(git_ceiling)  # so `cwd` is outside any git checkout
    env["COLUMNS"] = "200"  # wide enough that Rich never folds a digest in a table
    return env


def _run(env: dict[str, str], cwd: Path, *args: str | Path) -> Result:
    argv = [str(SHIPYARD), *map(str, args)]
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, fragment: str = "") -> str:
    """The error contract: non-zero exit, exactly one stderr line starting with `error:`."""
    assert result.code != 0, result.out
    assert "Traceback" not in result.err + result.out
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), result.err
    assert fragment in lines[0]
    return lines[0]


Cli = Callable[..., Result]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli(home: Path, tmp_path: Path) -> Cli:
    """`cli(*args, cwd=...)` runs the console script against the test's own home."""
    work = tmp_path / "work"
    work.mkdir()
    env = _env(home, tmp_path)

    def run(*args: str | Path, cwd: Path = work) -> Result:
        return _run(env, cwd, *args)

    return run


def _stored_file(home: Path, digest: str, name: str) -> Path:
    hexdigest = digest.removeprefix("sha256:")
    return home / "artifacts" / "sha256" / hexdigest[:2] / hexdigest / name


@pytest.fixture
def git_checkout(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "checkout"
    repo.mkdir()
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "train.py").write_text("print('train')\n")
    subprocess.run([*git, "add", "train.py"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "train"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    return repo, head.stdout.strip()


def test_help_lists_the_commands(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("push", "list", "show", "diff", "rm", "export", "verify", "gc", "predict", "alias"):
        assert command in result.out


@dataclass
class Journey:
    """What the phases of one model's life share."""

    cli: Cli
    home: Path
    tmp: Path
    onnx_path: Path
    onnx_digest: str = ""
    skops_digest: str = ""


# The keys `show --json` promises.
SHOW_KEYS = {"name", "version", "format", "digest", "size", "aliases", "parent", "metrics", "params", "tags"}
SHOW_KEYS |= {"signature", "created_at", "git_commit", "trusted"}


def _push_two_versions(j: Journey, skops_path: Path, repo: Path) -> None:
    """push prints the new reference and its digest (and the alias it moved)."""
    flags = ["--alias", "production", "--metric", "accuracy=0.97", "--param", "C=1.0", "--tag", "team=ml"]
    pushed = j.cli("push", "iris", j.onnx_path, *flags, "--description", "first cut", cwd=repo)
    match = re.fullmatch(rf"pushed iris:1 ({DIGEST}) to registry {j.home} \(production → 1\)\n", pushed.out)
    assert match, pushed.err
    j.onnx_digest = match[1]
    pushed = j.cli("push", "iris", skops_path, "--parent", "iris@production", "--metric", "accuracy=0.95")
    match = re.fullmatch(rf"pushed iris:2 ({DIGEST}) to registry {j.home}\n", pushed.out)
    assert match, pushed.err
    j.skops_digest = match[1]


def _check_list_and_show(j: Journey, git_head: str) -> None:
    (summary,) = j.cli("list", "--json").json()
    assert summary["name"] == "iris"
    assert (summary["latest"], summary["versions"], summary["aliases"]) == (2, 2, {"production": 1})
    assert [v["version"] for v in j.cli("list", "iris", "--json").json()] == [2, 1]

    first = j.cli("show", "iris:1", "--json").json()
    assert set(first) >= SHOW_KEYS
    assert (first["name"], first["version"], first["format"]) == ("iris", 1, "onnx")
    assert (first["digest"], first["size"]) == (j.onnx_digest, j.onnx_path.stat().st_size)
    assert (first["aliases"], first["parent"], first["trusted"]) == (["production"], None, False)
    assert (first["metrics"], first["params"], first["tags"]) == (
        {"accuracy": 0.97},
        {"C": "1.0"},
        {"team": "ml"},
    )
    assert first["description"] == "first cut"
    assert first["signature"] == {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    assert first["created_at"].endswith("+00:00")
    assert first["git_commit"] == git_head  # pushed from inside the checkout

    second = j.cli("show", "iris", "--json").json()
    assert (second["version"], second["format"], second["parent"]) == (2, "skops", "iris:1")
    assert second["git_commit"] is None  # pushed from outside any checkout
    assert second["signature"]["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    human = j.cli("show", "iris@production")
    assert j.onnx_digest in human.out and "X: FP32[?, 4]" in human.out, human.err


def _check_aliases(j: Journey) -> None:
    assert j.cli("alias", "iris", "production", "2").out.strip() == "iris@production → 2 (was 1)"
    history = j.cli("history", "iris", "production", "--json").json()
    assert [(h["action"], h["previous"], h["version"]) for h in history] == [("set", None, 1), ("set", 1, 2)]
    rolled = j.cli("rollback", "iris", "production")
    assert rolled.out.strip() == "iris@production → 1 (rolled back from 2)", rolled.err
    assert j.cli("show", "iris@production", "--json").json()["version"] == 1
    assert j.cli("alias", "iris", "canary", "2").code == 0
    assert j.cli("alias", "iris", "canary", "--delete").out.strip() == "removed iris@canary (was 2)"
    assert_one_line_error(j.cli("show", "iris@canary"), "has no alias 'canary' (aliases: production)")


def _check_diff(j: Journey) -> None:
    fields = j.cli("diff", "iris:1", "iris:2", "--json").json()["fields"]
    assert fields["format"] == {"left": "onnx", "right": "skops", "same": False}
    assert fields["metrics"] == {"left": {"accuracy": 0.97}, "right": {"accuracy": 0.95}, "same": False}
    assert fields["signature"]["same"] is False
    assert fields["size"]["same"] is False
    assert "format" in j.cli("diff", "iris:1", "iris:2").out


def _check_predict(j: Journey, logreg: Any, forest: Any) -> None:
    x = np.array(ROWS)
    rows = j.cli("predict", "iris:1", "--input", json.dumps({"inputs": ROWS})).json()
    assert rows["model"] == "iris:1"
    assert rows["outputs"]["label"] == logreg.predict(x).tolist()
    np.testing.assert_allclose(rows["outputs"]["probabilities"], logreg.predict_proba(x), atol=1e-5)
    named = j.cli("predict", "iris@production", "-i", json.dumps({"inputs": {"X": ROWS}})).json()
    assert named["outputs"]["label"] == rows["outputs"]["label"]
    request = j.tmp / "request.json"
    request.write_text(json.dumps({"inputs": ROWS[0]}))  # one row, without the batch axis
    from_file = j.cli("predict", "iris:2", "--input", f"@{request}").json()
    assert from_file["outputs"]["label"] == forest.predict(x[:1]).tolist()


def _check_export_and_rm(j: Journey) -> None:
    target = j.tmp / "exported.onnx"
    assert j.cli("export", "iris:1", target).code == 0
    assert target.read_bytes() == j.onnx_path.read_bytes()
    assert_one_line_error(j.cli("rm", "iris:1"), "--force")
    removed = j.cli("rm", "iris:1", "--force")
    assert removed.out.strip() == "removed iris:1; removed alias(es) production"
    assert_one_line_error(j.cli("show", "iris:1"), "has no version 1 (versions: 2; latest is 2)")


def _check_verify_and_gc(j: Journey, tamper: Callable[[Path], None]) -> None:
    verified = j.cli("verify")
    assert verified.code == 0
    assert "ok     iris:2" in verified.out and "1 version(s) verified" in verified.out
    tamper(_stored_file(j.home, j.skops_digest, "model.skops"))
    failed = j.cli("verify")
    assert_one_line_error(failed, "1 of 1 version(s) failed verification")
    assert failed.code == 7
    assert "FAILED iris:2: file 'model.skops' does not match its digest" in failed.out
    message = assert_one_line_error(j.cli("predict", "iris:2", "--input", json.dumps({"inputs": ROWS})))
    assert "iris:2" in message and "model.skops" in message
    collected = j.cli("gc", "--grace-seconds", "0")  # frees the removed iris:1's artifact
    assert collected.out.startswith("removed 1 unreferenced item(s)"), collected.err
    assert not _stored_file(j.home, j.onnx_digest, "model.onnx").exists()


def test_a_models_life_through_the_cli(
    cli: Cli,
    home: Path,
    tmp_path: Path,
    onnx_path: Path,
    skops_path: Path,
    logreg: Any,
    forest: Any,
    git_checkout: tuple[Path, str],
    tamper: Callable[[Path], None],
) -> None:
    """push, list, show, alias, history, rollback, diff, predict, export, rm, verify, gc in turn."""
    repo, head = git_checkout
    journey = Journey(cli, home, tmp_path, onnx_path)
    _push_two_versions(journey, skops_path, repo)
    _check_list_and_show(journey, head)
    _check_aliases(journey)
    _check_diff(journey)
    _check_predict(journey, logreg, forest)
    _check_export_and_rm(journey)
    _check_verify_and_gc(journey, tamper)


def test_home_option_overrides_the_environment(cli: Cli, tmp_path: Path, onnx_path: Path) -> None:
    other = tmp_path / "other-home"
    assert cli("--home", other, "push", "elsewhere", onnx_path).code == 0
    assert [m["name"] for m in cli("--home", other, "list", "--json").json()] == ["elsewhere"]
    assert cli("list", "--json").json() == []


def test_pickle_pushed_with_trust_is_recorded(cli: Cli, pickle_path: Path) -> None:
    pushed = cli("push", "legacy", pickle_path, "--trust")
    assert pushed.code == 0, pushed.err
    shown = cli("show", "legacy", "--json").json()
    assert (shown["format"], shown["trusted"]) == ("pickle", True)
    predicted = cli("predict", "legacy", "--input", json.dumps({"inputs": ROWS})).json()
    assert len(predicted["outputs"]["label"]) == 2


@pytest.fixture(scope="module")
def bad_inputs(
    tmp_path_factory: pytest.TempPathFactory,
    onnx_path: Path,
    onnx_variants: Any,
    pickle_path: Path,
    truncated_onnx_path: Path,
) -> dict[str, Any]:
    """A registry with iris:1 (alias production) and iris:2, and files of every wrong kind."""
    root = tmp_path_factory.mktemp("bad-input")
    home = root / "home"
    with Registry(home) as registry:
        registry.push("iris", onnx_path, alias="production")
        registry.push("iris", onnx_variants(1))
    (root / "empty.onnx").touch()
    (root / "empty-dir").mkdir()
    (root / "two-files").mkdir()
    (root / "two-files" / "a.onnx").write_bytes(onnx_path.read_bytes())
    (root / "two-files" / "b.onnx").write_bytes(onnx_path.read_bytes())
    (root / "notes.txt").write_text("this is not a model\n")
    (root / "work").mkdir()
    return {
        "env": _env(home, root),
        "cwd": root / "work",
        "paths": {
            "onnx": onnx_path,
            "pickle": pickle_path,
            "truncated": truncated_onnx_path,
            "missing": root / "missing.onnx",
            "empty": root / "empty.onnx",
            "empty_dir": root / "empty-dir",
            "two_files": root / "two-files",
            "text": root / "notes.txt",
        },
    }


def case(case_id: str, args: str | list[str], exit_code: int, fragment: str, *marks: Any) -> Any:
    """One bad command line; a string is split like a shell would, `<name>` is a prepared path."""
    argv = shlex.split(args) if isinstance(args, str) else args
    return pytest.param(argv, exit_code, fragment, id=case_id, marks=marks)


def predict(payload: str) -> list[str]:
    return ["predict", "iris:1", "--input", payload]


BAD_INPUT = [
    case("unknown-name", "show irsi", 3, "no model named 'irsi' in the registry (models: iris)"),
    case("unknown-version", "show iris:9", 3, "has no version 9 (versions: 1-2; latest is 2)"),
    case("unknown-alias", "show iris@staging", 3, "has no alias 'staging' (aliases: production)"),
    case("unknown-alias-history", "history iris staging", 3, "(aliases: production)"),
    case("malformed-ref", "show iris@@prod", 2, "malformed model reference 'iris@@prod'"),
    case("uppercase-ref", "show Iris:1", 2, "invalid model name 'Iris'"),
    case("zero-version", "predict iris:0 -i []", 2, "positive integer"),
    case("bad-push-name", "push 'My Model' <onnx>", 2, "invalid model name 'My Model'"),
    case("missing-path", "push x <missing>", 2, "does not exist"),
    case("empty-file", "push x <empty>", 2, "is empty (0 bytes)"),
    case("empty-dir", "push x <empty_dir>", 2, "is empty: no model file inside"),
    case("wrong-shape-dir", "push x <two_files>", 2, "holds 2 files (a.onnx, b.onnx)"),
    case("not-a-model", "push x <text>", 2, "not a model file Shipyard recognises"),
    case("truncated-onnx", "push x <truncated>", 2, "truncated"),
    case("pickle-untrusted", "push x <pickle>", 5, "--trust"),
    case("metric-not-a-number", "push x <onnx> --metric acc=high", 2, "must be a number"),
    case("tag-without-value", "push x <onnx> --tag team", 2, "--tag expects KEY=VALUE"),
    case("invalid-json", predict("{inputs: [[1, 2"), 2, "--input is not valid JSON"),
    case("missing-input-file", predict("@<missing>"), 2, "does not exist"),
    case("no-inputs-key", predict('{"instances": [[1, 2, 3, 4]]}'), 2, '"inputs" key'),
    case("feature-count", predict('{"inputs": [[1, 2, 3]]}'), 2, "got 3); signature X: FP32[?, 4]"),
    case("wrong-type", predict('{"inputs": [["a", "b", "c", "d"]]}'), 2, "expects numbers (FP32)"),
    case(
        "number-as-text",
        predict('{"inputs": [[5.1, 3.5, 1.4, "0.2"]]}'),
        2,
        "expects numbers",
    ),
    case(
        "null-value",
        predict('{"inputs": [[null, 3.5, 1.4, 0.2]]}'),
        2,
        "expects numbers",
    ),
    case("ragged-rows", predict('{"inputs": [[1, 2, 3, 4], [1, 2]]}'), 2, "ragged rows"),
    case("unknown-input", predict('{"inputs": {"features": [[1, 2]]}}'), 2, "unknown input(s) 'features'"),
    case("alias-unknown-version", "alias iris production 9", 3, "has no version 9"),
    case("alias-missing-version", "alias iris canary", 2, "missing VERSION"),
    case("rollback-nothing-earlier", "rollback iris production", 4, "no earlier target"),
    case("rm-aliased", "rm iris:1", 4, "--force"),
    case("export-over-a-file", "export iris:1 <onnx>", 2, "already exists"),
    case("verify-unknown", "verify nope", 3, "no model named 'nope'"),
    case("missing-argument", "show", 2, "ref"),
    case("not-an-integer", "alias iris x two", 2, "Invalid value for 'version'"),
    case("unknown-command", "deploy-everything", 2, "deploy-everything"),
    case("non-ascii-digit", "show iris:²", 2, "malformed model reference"),
]


@pytest.mark.parametrize(("args", "exit_code", "fragment"), BAD_INPUT)
def test_bad_input_gets_one_clear_line(
    bad_inputs: dict[str, Any], args: list[str], exit_code: int, fragment: str
) -> None:
    argv = list(args)
    for key, path in bad_inputs["paths"].items():
        argv = [a.replace(f"<{key}>", str(path)) for a in argv]
    result = _run(bad_inputs["env"], bad_inputs["cwd"], *argv)
    line = assert_one_line_error(result, fragment)
    assert "internal error" not in line
    assert result.code == exit_code, line
