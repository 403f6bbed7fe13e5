"""The README's examples run as written: its Python snippets and its `$ shipyard …` commands.

The commands run in order in a registry prepared as the README implies (the example models of
`make run`, and `model.onnx` / `model.pkl` in the working folder); each must exit as the example
shows and print the same first words (the rest, digests and times, differs from run to run).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers import SHIPYARD, running

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# Long-running or minutes-long commands, run elsewhere: the Python snippets below talk to a real
# `shipyard serve`, and the optimize tests run the search.
NOT_RUN_HERE = ("serve", "optimize", "ps")  # ps needs a running server
# Loading MiniLM with coverage on, on a busy 2-core machine, has taken over two minutes.
READY_TIMEOUT_S = 600

pytestmark = pytest.mark.slow


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


def python_snippet(containing: str) -> str:
    (snippet,) = [block for block in code_blocks("python") if containing in block]
    return snippet


def console_examples() -> list[tuple[str, list[str]]]:
    """Each `$ shipyard …` command of the console blocks with the lines the README shows after it."""
    examples: list[tuple[str, list[str]]] = []
    for block in code_blocks("console"):
        for chunk in re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]:
            command, *shown = chunk.rstrip("\n").split("\n")
            if command.startswith("shipyard ") and command.split()[1] not in NOT_RUN_HERE:
                examples.append((command, [line for line in shown if line.strip()]))
    return examples


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(SHIPYARD_HOME=str(home), HF_HUB_OFFLINE="1", COLUMNS="200")
    return env


def run_python(code: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environment(home),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_python_api_snippet_runs_in_a_fresh_registry(tmp_path: Path) -> None:
    result = run_python(python_snippet("shipyard.push("), tmp_path / "home", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("iris:1 sha256:"), result.stdout
    assert lines[-1] == "(2, 1)", result.stdout


@pytest.fixture(scope="module")
def run_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with the example models `make run` pushes."""
    home = tmp_path_factory.mktemp("readme") / "home"
    pushed = run_python(
        f"import runpy; runpy.run_path({str(ROOT / 'examples' / 'push_examples.py')!r}, run_name='__main__')",
        home,
        ROOT,
    )
    assert pushed.returncode == 0, pushed.stderr
    return home


@pytest.fixture(scope="module")
def server_url(run_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`shipyard serve` of the models the server snippets use, on a port the kernel chose (and
    gRPC on one found free: `server_url:GRPC_PORT`)."""
    with running(
        run_registry,
        ["iris@production", "minilm@production"],
        tmp_path_factory.mktemp("serve-log"),
        grpc=True,
        env={"HF_HUB_OFFLINE": "1"},
        ready_timeout=READY_TIMEOUT_S,
    ) as server:
        yield f"{server.url}:{server.grpc_port}"


@pytest.mark.parametrize("client", ["tritonclient", "tritonclient.grpc", "openai"])
def test_client_snippets_run_against_a_real_server(client: str, server_url: str, tmp_path: Path) -> None:
    url, grpc_port = server_url.rsplit(":", 1)
    if client == "tritonclient.grpc":
        snippet = python_snippet("tritonclient.grpc")
        code = snippet.replace("127.0.0.1:8001", f"127.0.0.1:{grpc_port}")
        assert code != snippet, "the snippet no longer names 127.0.0.1:8001"
    else:
        snippet = python_snippet(f"import {client}" if client == "openai" else "tritonclient.http")
        code = snippet.replace("127.0.0.1:8000", url.removeprefix("http://"))
        assert code != snippet, "the snippet no longer names 127.0.0.1:8000"
    result = run_python(code, tmp_path / "unused-home", tmp_path)
    assert result.returncode == 0, result.stderr
    expected = {"tritonclient": "[[", "tritonclient.grpc": "[[", "openai": "384 Usage("}[client]
    assert result.stdout.startswith(expected), result.stdout


def _prepare_working_folder(folder: Path) -> None:
    """The files the console examples push: an ONNX model and a pickle."""
    import pickle

    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf: Any = LogisticRegression(max_iter=1000).fit(x, y)
    options = {id(clf): {"zipmap": False}}
    folder.joinpath("model.onnx").write_bytes(to_onnx(clf, x[:1], options=options).SerializeToString())
    folder.joinpath("model.pkl").write_bytes(pickle.dumps(clf))


def test_console_examples_exit_and_print_as_shown(run_registry: Path, tmp_path: Path) -> None:
    _prepare_working_folder(tmp_path)
    examples = console_examples()
    assert len(examples) >= 5, examples
    for command, shown in examples:
        result = subprocess.run(
            [str(SHIPYARD), *shlex.split(command, comments=True)[1:]],
            env=environment(run_registry),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        output = result.stdout if result.returncode == 0 else result.stderr
        if shown and shown[0].startswith("error:"):
            assert result.returncode not in (0, 1), f"{command}: {result.stdout}"
            assert output.startswith("error:"), f"{command}: {output}"
            continue
        assert result.returncode == 0, f"{command}: {result.stderr}"
        if shown and (shown[0][0].isalnum() or shown[0].startswith("{")):  # not a table
            words = shown[0].split()[:2] if shown[0].startswith("pushed") else shown[0].split()[:1]
            if words[0].startswith("sy_"):  # a new API key: random, so only its shape can match
                assert re.fullmatch(r"sy_[0-9a-f]{16}_[\w-]{43}", output.split()[0]), f"{command}: {output}"
                continue
            assert output.split()[: len(words)] == words, f"{command}: {output}"
