# ruff: noqa: F811 -- the cli and home fixtures are imported from test_cli
"""`shipyard monitor export` as a user runs it: files written whole, bad input one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_cli import Cli, assert_one_line_error, cli, home  # noqa: F401 -- fixtures

from servers import free_port
from shipyard.monitor.alerts import AlertConfig, render_rules
from shipyard.monitor.dashboard import render_dashboard


def test_export_writes_the_dashboard_and_the_rules(cli: Cli, tmp_path: Path) -> None:
    grafana, rules = tmp_path / "grafana" / "dashboards", tmp_path / "prometheus" / "shipyard.yml"
    result = cli(
        "monitor", "export", "--grafana", grafana, "--prometheus-rules", rules, "--error-rate", "0.1"
    )
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"wrote the Grafana dashboard to {grafana / 'shipyard.json'}",
        f"wrote 9 Prometheus alerting rules to {rules}",
    ]
    assert json.loads((grafana / "shipyard.json").read_text()) == render_dashboard()
    assert rules.read_text() == render_rules(AlertConfig(error_rate=0.1))
    assert rules.stat().st_mode & 0o777 == 0o644  # readable by the user Prometheus runs as
    assert [p.name for p in rules.parent.iterdir()] == ["shipyard.yml"]  # no temporary file left

    again = cli("monitor", "export", "--prometheus-rules", rules, "--json")
    written = again.json()["prometheus_rules"]
    assert written["path"] == str(rules) and written["thresholds"]["error_rate"] == 0.05
    assert "ShipyardModelNotReady" in written["alerts"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission")
def test_an_unwritable_folder_is_one_line_and_leaves_what_was_there(cli: Cli, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "shipyard.yml").write_text("# the operator's own rules\n")
    locked.chmod(0o500)
    try:
        result = cli("monitor", "export", "--prometheus-rules", locked / "shipyard.yml")
    finally:
        locked.chmod(0o700)
    line = assert_one_line_error(result, "cannot write")
    assert "--prometheus-rules" in line and "Permission denied" in line
    assert result.code == 2
    assert (locked / "shipyard.yml").read_text() == "# the operator's own rules\n"


def test_an_output_that_cannot_be_a_folder_is_one_line(cli: Cli, tmp_path: Path) -> None:
    """Works as root too: a path under a plain file can never be created."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    result = cli("monitor", "export", "--grafana", blocker / "grafana")
    line = assert_one_line_error(
        result, f"cannot write '{blocker / 'grafana' / 'shipyard.json'}' (--grafana)"
    )
    assert "choose a writable location" in line
    assert result.code == 2
    assert blocker.read_text() == "not a folder\n"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--error-rate", "1.5"], "--error-rate: input should be less than or equal to 1, got 1.5"),
        (["--error-rate", "lots"], "'--error-rate'"),
        (["--p99-latency", "0"], "--p99-latency: input should be greater than 0"),
        (["--for", "five minutes"], "--for: expects a Prometheus duration such as 30s, 5m or 1h"),
        (["--job", 'a"b'], "--job: expects a label value without quotes"),
        ([], "nothing to export: give --grafana DIR, --prometheus-rules FILE or --tensorboard DIR"),
    ],
)
def test_bad_options_are_one_line_with_exit_code_2(
    cli: Cli, tmp_path: Path, args: list[str], fragment: str
) -> None:
    rules = tmp_path / "rules.yml"
    outputs = ["--prometheus-rules", str(rules)] if args else []
    result = cli("monitor", "export", *outputs, *args)
    assert_one_line_error(result, fragment)
    assert result.code == 2
    assert not rules.exists()  # nothing half-written


def test_tensorboard_without_a_server_is_one_line_with_exit_code_6(cli: Cli, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("monitor", "export", "--tensorboard", tmp_path / "run", "--url", url)
    assert_one_line_error(result, f"nothing answers at {url}")
    assert result.code == 6
    assert not (tmp_path / "run").exists()
