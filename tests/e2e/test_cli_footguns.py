# ruff: noqa: F811 -- the cli and home fixtures are imported from test_cli
"""Commands that used to surprise: `rm NAME`, `gc` right after `rm`, `export REF folder/`; and one
`error:` line with the documented exit code for malformed invocations of every command."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import Cli, assert_one_line_error, cli, home  # noqa: F401

from shipyard.registry import Registry


@pytest.fixture
def two_versions(home: Path, onnx_path: Path, onnx_variants: object) -> Path:
    with Registry(home) as registry:
        registry.push("iris", onnx_path, alias="production")
        registry.push("iris", onnx_variants(1))  # type: ignore[operator]
    return home


def test_rm_of_a_bare_name_off_a_terminal_needs_the_version_or_force(cli: Cli, two_versions: Path) -> None:
    refused = cli("rm", "iris")
    assert refused.code == 2
    assert_one_line_error(
        refused, "'iris' selects iris:2; name the version (`shipyard rm iris:2`) or add --force"
    )
    assert [v["version"] for v in cli("list", "iris", "--json").json()] == [2, 1]
    assert cli("rm", "iris", "--force").out == "removed iris:2\n"
    assert cli("rm", "iris:1", "--force").out == "removed iris:1; removed alias(es) production\n"


def test_gc_says_what_the_grace_period_keeps_and_how_to_reclaim_it(cli: Cli, two_versions: Path) -> None:
    assert cli("rm", "iris:2").code == 0
    kept = cli("gc")
    assert kept.code == 0, kept.err
    assert kept.out.startswith("removed 0 unreferenced item(s), freed 0 B; kept 1 item(s) (")
    assert (
        "younger than 600 s" in kept.out and "`shipyard gc --grace-seconds 0` reclaims them now" in kept.out
    )
    reclaimed = cli("gc", "--grace-seconds", "0", "--json").json()
    assert (reclaimed["removed"], reclaimed["kept_in_grace"]) == (1, 0)
    assert reclaimed["freed_bytes"] > 0
    assert cli("gc").out == "removed 0 unreferenced item(s), freed 0 B\n"


def test_export_into_a_new_folder_named_with_a_slash(cli: Cli, two_versions: Path, tmp_path: Path) -> None:
    exported = cli("export", "iris:1", f"{tmp_path / 'newdir'}/")
    assert exported.out == f"exported iris:1 to {tmp_path / 'newdir' / 'model.onnx'}\n", exported.err
    assert [p.name for p in (tmp_path / "newdir").iterdir()] == ["model.onnx"]


def test_export_into_an_existing_folder(
    cli: Cli, two_versions: Path, tmp_path: Path, onnx_path: Path
) -> None:
    folder = tmp_path / "existing"
    folder.mkdir()
    assert cli("export", "iris:1", folder).code == 0
    assert (folder / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert_one_line_error(cli("export", "iris:1", folder), "model.onnx already exists")
    assert cli("export", "iris:1", tmp_path / "plain.onnx").code == 0  # no slash: a file name
    assert (tmp_path / "plain.onnx").is_file()


# Each command, a few ways to get it wrong: (arguments, exit code, part of the message).
MALFORMED = {
    "push": [
        ("push", 2, "Missing argument"),
        ("push iris", 2, "'path'"),
        ("push iris m.onnx --bogus", 2, "--bogus"),
    ],
    "list": [("list Iris", 2, "invalid model name"), ("list nope", 3, "no model named 'nope'")],
    "show": [("show", 2, "'ref'"), ("show iris:x", 2, "malformed"), ("show iris:7", 3, "no version 7")],
    "diff": [("diff iris:1", 2, "'right'"), ("diff iris:1 nope:1", 3, "no model named 'nope'")],
    "rm": [
        ("rm", 2, "'ref'"),
        ("rm iris", 2, "--force"),
        ("rm iris:1", 4, "--force"),
        ("rm iris:9", 3, "no version 9"),
    ],
    "export": [("export iris:1", 2, "DEST"), ("export nope:1 out.onnx", 3, "no model named")],
    "verify": [("verify iris@@x", 2, "malformed"), ("verify iris:5", 3, "no version 5")],
    "gc": [("gc --grace-seconds -1", 2, "grace-seconds"), ("gc --grace-seconds soon", 2, "grace-seconds")],
    "predict": [("predict iris:1", 2, "--input"), ("predict iris:1 -i nojson", 2, "not valid JSON")],
    "alias": [
        ("alias iris", 2, "ALIAS"),
        ("alias iris prod 9", 3, "no version 9"),
        ("alias iris PROD 1", 2, "alias"),
    ],
    "rollback": [("rollback iris", 2, "ALIAS"), ("rollback iris production", 4, "no earlier target")],
    "history": [("history iris", 2, "ALIAS"), ("history nope prod", 3, "no model named")],
    "root": [("--home", 2, "--home"), ("--version extra", 0, ""), ("nonsense", 2, "nonsense")],
}


@pytest.mark.parametrize("command", sorted(MALFORMED))
def test_malformed_invocations_get_one_line_and_the_documented_code(
    cli: Cli, two_versions: Path, command: str
) -> None:
    for args, code, fragment in MALFORMED[command]:
        result = cli(*args.split())
        assert result.code == code, (args, result.err)
        if code:
            line = assert_one_line_error(result, fragment)
            assert "internal error" not in line, args
