"""`shipyard push` and `shipyard show` on Hugging Face folders, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from text_support import DIM, OFFLINE

from tiny_models import tiny_bert_config

SHIPYARD = Path(sys.executable).with_name("shipyard")


def shipyard(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(OFFLINE, SHIPYARD_HOME=str(home))
    argv = [str(SHIPYARD), *map(str, args)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_push_and_show_a_model_folder(tmp_path: Path, minilm_folder: Path) -> None:
    pushed = shipyard(tmp_path, "push", "minilm", minilm_folder)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith("pushed minilm:1 sha256:"), pushed.stdout
    shown = shipyard(tmp_path, "show", "minilm", "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["format"] == "transformers"
    assert record["extra"]["task"] == "feature-extraction"
    assert record["signature"]["outputs"][0] == {"name": "embedding", "datatype": "FP32", "shape": [-1, DIM]}


def test_push_a_folder_without_tokenizer_is_one_error_line(tmp_path: Path, minilm_tokenizer: Any) -> None:
    from transformers import BertModel

    folder = tmp_path / "no-tokenizer"
    BertModel(tiny_bert_config(minilm_tokenizer)).save_pretrained(str(folder))  # config + weights only
    result = shipyard(tmp_path / "home", "push", "x", folder)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "no tokenizer" in lines[0] and "tokenizer.save_pretrained" in lines[0], lines[0]
    listed = shipyard(tmp_path / "home", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout


def test_push_and_show_a_causal_language_model(tmp_path: Path) -> None:
    from tiny_lm import tiny_lm_folder

    folder = tiny_lm_folder(tmp_path / "lm")
    pushed = shipyard(tmp_path / "home", "push", "lm", folder)
    assert pushed.returncode == 0, pushed.stderr
    shown = shipyard(tmp_path / "home", "show", "lm")
    assert "transformers-lm (transformers)" in shown.stdout
    lines = shown.stdout.splitlines()
    start = next(i for i, row in enumerate(lines) if row.startswith("generative"))
    block = "\n".join(lines[start : start + 5])  # one fact per line
    for fact in ("architecture llama", "context 1024 tokens", "tokenizer bpe", "chat template: yes"):
        assert fact in block, block
