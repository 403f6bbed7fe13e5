"""The CLI's step lines: said on a terminal's stderr, silent with --json or in a pipe."""

from __future__ import annotations

import sys

import pytest

from shipyard.cli._context import steps


@pytest.mark.parametrize(
    ("terminal", "json_", "said"), [(True, False, "converting …\n"), (True, True, ""), (False, False, "")]
)
def test_steps_speak_only_on_a_terminal_without_json(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    terminal: bool,
    json_: bool,
    said: str,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    steps(json_)("converting")
    captured = capsys.readouterr()
    assert captured.err == said and captured.out == ""
