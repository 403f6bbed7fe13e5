# ruff: noqa: F811 -- the cli and home fixtures are imported from test_cli
"""What the CLI prints, as a user sees it: --version, --json everywhere, tables that fit a narrow
terminal and turn tab-separated in a pipe, metrics at a readable precision, help without
placeholders, and the registry named where a user would wonder which one was used."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_cli import ROWS, Cli, Result, _env, _run, assert_one_line_error, cli, home  # noqa: F401

from shipyard import __version__
from shipyard.registry import Registry

ACCURACY = 0.9733333333333334


@pytest.fixture
def iris_home(home: Path, onnx_path: Path, onnx_variants: object) -> Path:
    """iris:1 (production, quality and timing metrics) and iris:2, pushed through the API."""
    with Registry(home) as registry:
        metrics = {"accuracy": ACCURACY, "p50_b1_ms": 0.0123456, "size_bytes": 851234}
        registry.push("iris", onnx_path, alias="production", metrics=metrics)
        registry.push("iris", onnx_variants(1), metrics={"accuracy": 0.95})  # type: ignore[operator]
    return home


def terminal(home: Path, tmp_path: Path, *args: str, columns: int = 60) -> Result:
    """The command as on a terminal `columns` wide (Rich honours TTY_COMPATIBLE)."""
    env = _env(home, tmp_path) | {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1"}
    result = _run(env, tmp_path, *args)
    return Result(result.code, re.sub(r"\x1b\[[0-9;]*m", "", result.out), result.err)  # no styles


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert (result.code, result.out) == (0, f"shipyard {__version__}\n")


def test_help_of_every_command_has_no_placeholders(cli: Cli) -> None:
    listing = cli("--help").out
    commands = re.findall(r"^  ([a-z]+)  ", listing.split("Commands:")[1], flags=re.MULTILINE)
    assert {"push", "list", "rm", "gc", "serve", "optimize"} <= set(commands)
    for command in ["", *commands]:
        result = cli(*([command] if command else []), "--help")
        assert result.code == 0, result.err
        assert not re.search(r"\{[a-z_]+\}|<[a-z][a-z \[\]]*>|\[str\]|<list", result.out), (
            command,
            result.out,
        )
        usage = result.out.splitlines()[0]
        assert "{" not in usage and "<" not in usage, usage


def test_every_command_that_asks_a_server_takes_its_key_from_shipyard_api_key(cli: Cli) -> None:
    for command in (["drift"], ["quality"], ["feedback"], ["monitor", "export"]):
        help_text = " ".join(cli(*command, "--help").out.split())  # rich wraps the panel's lines
        assert "--api-key" in help_text and "SHIPYARD_API_KEY" in help_text, (command, help_text)


def test_every_command_prints_one_json_document(cli: Cli, tmp_path: Path, onnx_path: Path) -> None:
    pushed = cli("push", "iris", onnx_path, "--metric", f"accuracy={ACCURACY}", "--json").json()
    assert (pushed["name"], pushed["version"], pushed["metrics"]) == ("iris", 1, {"accuracy": ACCURACY})
    assert cli("push", "iris", onnx_path, "--json").json()["version"] == 2
    assert cli("list", "--json").json()[0]["name"] == "iris"
    assert [v["version"] for v in cli("list", "iris", "--json").json()] == [2, 1]
    assert cli("show", "iris:1", "--json").json()["metrics"] == {"accuracy": ACCURACY}  # full precision
    assert cli("diff", "iris:1", "iris:2", "--json").json()["fields"]["digest"]["same"] is True
    moved = cli("alias", "iris", "production", "1", "--json").json()
    assert moved == {"name": "iris", "alias": "production", "version": 1, "previous": None}
    assert cli("alias", "iris", "production", "2", "--json").json()["previous"] == 1
    rolled = cli("rollback", "iris", "production", "--json").json()
    assert (rolled["version"], rolled["previous"]) == (1, 2)
    assert len(cli("history", "iris", "production", "--json").json()) == 3
    exported = cli("export", "iris:2", tmp_path / "out.onnx", "--json").json()
    assert exported == {"ref": "iris:2", "path": str(tmp_path / "out.onnx")}
    verified = cli("verify", "--json").json()
    assert (verified["failed"], [v["ok"] for v in verified["versions"]]) == (0, [True, True])
    assert cli("predict", "iris:1", "-i", json.dumps({"inputs": ROWS}), "--json").json()["model"] == "iris:1"
    assert cli("rm", "iris:2", "--json").json() == {"removed": "iris:2", "aliases_removed": []}
    collected = cli("gc", "--json").json()
    assert set(collected) == {
        "removed",
        "freed_bytes",
        "kept_in_grace",
        "kept_in_grace_bytes",
        "grace_seconds",
    }
    assert cli("alias", "iris", "production", "--delete", "--json").json()["previous"] == 1


def test_tables_in_a_pipe_are_tab_separated(cli: Cli, iris_home: Path) -> None:
    listing = cli("list").out.splitlines()
    assert listing[0].split("\t") == ["name", "latest", "versions", "aliases", "updated"]
    assert listing[1].split("\t")[:4] == ["iris", "2", "2", "production→1"]
    versions = [line.split("\t") for line in cli("list", "iris").out.splitlines()]
    assert versions[0] == ["version", "aliases", "format", "size", "metrics", "created", "digest"]
    assert [row[0] for row in versions[1:]] == ["2", "1"]
    assert versions[2][4] == "accuracy=0.9733"  # quality metrics only, four digits
    history = cli("history", "iris", "production").out.splitlines()
    assert history[0].split("\t") == ["when", "action", "from", "to", "by"]
    for out in (cli("list").out, cli("list", "iris").out, cli("diff", "iris:1", "iris:2").out):
        assert not set(out) & set("┏┃━│└┡"), out


@pytest.mark.parametrize("args", [["list"], ["list", "iris"], ["history", "iris", "production"]])
def test_tables_fit_a_narrow_terminal(iris_home: Path, tmp_path: Path, args: list[str]) -> None:
    result = terminal(iris_home, tmp_path, *args, columns=60)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert "┃" in result.out  # a Rich table, not the piped form
    assert max(len(line) for line in lines) <= 60, result.out
    if args == ["list", "iris"]:
        assert "accuracy=0.9733 " in result.out and "0.97333" not in result.out  # never folded
        assert re.search(r"│ +1 │", result.out), result.out


def test_diff_fits_a_narrow_terminal(iris_home: Path, tmp_path: Path) -> None:
    result = terminal(iris_home, tmp_path, "diff", "iris:1", "iris:2", columns=60)
    assert max(len(line) for line in result.out.splitlines()) <= 60, result.out


def test_show_rounds_metrics_and_keeps_timings_apart(cli: Cli, iris_home: Path) -> None:
    lines = {line.split()[0]: line for line in cli("show", "iris:1").out.splitlines() if line[:1] != " "}
    assert lines["metrics"].split(None, 1)[1] == "accuracy=0.9733"
    assert lines["measured"].split(None, 1)[1] == "p50_b1_ms=0.01235, size_bytes=851234"
    assert cli("show", "iris:1", "--json").json()["metrics"]["accuracy"] == ACCURACY


def test_an_empty_registry_says_which_one_it_is(cli: Cli, home: Path) -> None:
    listed = cli("list")
    assert (listed.code, listed.out) == (0, "")
    assert listed.err == f"registry {home} is empty (set SHIPYARD_HOME or --home to use another)\n"
    assert cli("list", "--json").json() == []
    assert_one_line_error(cli("show", "iris"), f"{home} is empty (set SHIPYARD_HOME or --home")


def test_push_names_the_registry(cli: Cli, home: Path, onnx_path: Path) -> None:
    pushed = cli("push", "iris", onnx_path, "--alias", "production")
    assert re.fullmatch(
        rf"pushed iris:1 sha256:[0-9a-f]{{64}} to registry {home} \(production → 1\)\n", pushed.out
    )
