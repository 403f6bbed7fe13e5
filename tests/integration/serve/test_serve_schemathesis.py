"""Property-based fuzzing of every operation in the server's own /openapi.json: no 5xx, ever."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from servers import Server


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(server: Server, tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("schemathesis")  # anything it writes stays out of the checkout
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "30",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
    ]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300, check=False)
    report = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    # every operation of the document (every route, plus V1 predict, V2 infer and V2 metadata
    # typed for each served model) was selected and exercised
    selected = re.search(r"(\d+) selected / (\d+) total", result.stdout)
    assert selected is not None and selected[1] == selected[2] and int(selected[1]) >= 30, report
    assert "Traceback" not in result.stdout, report
