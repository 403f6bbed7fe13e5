"""Text embedding summaries: the vectorised hashed-trigram embedding against a plain Python one,
the same vectors in another process, and the embedding feature's drift against scipy's tests on
each dimension (Bonferroni for tests, the largest distance otherwise)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from shipyard.errors import InvalidInputError
from shipyard.monitor import drift, embedding
from shipyard.monitor.profile import Feature, Profile, build_profile, output_key
from shipyard.settings import DriftSettings
from shipyard.types import Signature, TensorSpec

TEXT = Signature((TensorSpec("review", "BYTES", (-1,)),), ())
ENGLISH = [
    "the",
    "a",
    "good",
    "bad",
    "movie",
    "film",
    "plot",
    "actor",
    "was",
    "is",
    "very",
    "really",
    "not",
    "great",
    "boring",
    "loved",
    "hated",
    "it",
]
FRENCH = [
    "le",
    "la",
    "bon",
    "mauvais",
    "film",
    "intrigue",
    "acteur",
    "était",
    "est",
    "très",
    "vraiment",
    "pas",
    "génial",
    "ennuyeux",
    "aimé",
]
MASK = (1 << 64) - 1


def splitmix(key: int) -> int:
    """splitmix64's finaliser in Python integers."""
    x = (key + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def reference_embedding(text: str | bytes | None) -> list[float]:
    """The documented definition, one text at a time: counts of byte trigrams of ' text ',
    each trigram's ±1 vector from its hash bits, the count-weighted sum over the counts' norm."""
    if text is None:
        return [math.nan] * embedding.DIMS
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    data = f" {text.lower()} ".encode()
    counts = Counter(data[i : i + 3] for i in range(len(data) - 2))
    if not counts:
        return [math.nan] * embedding.DIMS
    norm = math.sqrt(sum(c * c for c in counts.values()))
    out = [0.0] * embedding.DIMS
    for gram, count in counts.items():
        bits = splitmix((gram[0] << 16) | (gram[1] << 8) | gram[2])
        for d in range(embedding.DIMS):
            out[d] += count * (1.0 if (bits >> d) & 1 else -1.0)
    return [v / norm for v in out]


def sentences(words: list[str], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([" ".join(rng.choice(words, int(rng.integers(4, 12)))) for _ in range(n)], dtype=object)


def test_the_vectorised_embedding_is_the_documented_one() -> None:
    texts = [
        "Ship it",
        "déployer 🚀 ce modèle",
        b"bytes too",
        "",
        None,
        "a",
        "x" * 500,
        "The THE the",
        *sentences(ENGLISH, 50, 1),
    ]
    got = embedding.embed_texts(np.array(texts, dtype=object))
    expected = np.array([reference_embedding(t) for t in texts])
    assert got.shape == (len(texts), embedding.DIMS)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert np.isnan(got[3]).all() and np.isnan(got[4]).all()  # empty and missing: no embedding
    assert np.allclose(got[7], embedding.embed_texts(["the the the"])[0])  # case folded


def test_another_process_computes_the_same_vectors() -> None:
    """Python's str hash is salted per process; the embedding must not be (profiles are computed
    at push time, windows in each worker)."""
    code = (
        "import json, sys; from shipyard.monitor.embedding import embed_texts; "
        "print(json.dumps(embed_texts(['drift me', 'ünïcode']).tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": ":".join(sys.path)},
    ).stdout
    assert json.loads(out) == embedding.embed_texts(["drift me", "ünïcode"]).tolist()


def embedding_feature(texts: np.ndarray) -> Feature:
    stored = json.loads(json.dumps(build_profile({"review": texts}, TEXT).to_dict(), allow_nan=False))
    (feature,) = [f for f in Profile.from_dict(stored).features if f.kind == "embedding"]
    return feature


@pytest.mark.parametrize(("words", "seed"), [(ENGLISH, 5), (FRENCH, 6)])
def test_small_windows_take_the_bonferroni_ks_p_value_of_scipy(words: list[str], seed: int) -> None:
    reference = sentences(ENGLISH, 200, 2)  # 200 rows: the profile holds every value exactly
    current = sentences(words, 150, seed)
    feature = embedding_feature(reference)
    assert all(c.cdf_exact for c in feature.components)
    result = drift._feature_drift(feature, embedding.embed_texts(current), DriftSettings())
    ref_vectors, cur_vectors = embedding.embed_texts(reference), embedding.embed_texts(current)
    p_values = [
        stats.ks_2samp(ref_vectors[:, d], cur_vectors[:, d], method="asymp").pvalue
        for d in range(embedding.DIMS)
    ]
    assert result.method == "ks" and result.kind == "embedding"
    assert result.score == pytest.approx(min(1.0, min(p_values) * embedding.DIMS), rel=1e-9, abs=1e-300)
    assert result.drifted == (words is FRENCH)
    assert result.histogram["component"] == f"review.embedding[{int(np.argmin(p_values))}]"


def test_large_windows_take_the_largest_wasserstein_distance_of_scipy() -> None:
    reference = sentences(ENGLISH, 200, 3)
    current = np.concatenate([sentences(ENGLISH, 1500, 4), sentences(FRENCH, 300, 5)])
    feature = embedding_feature(reference)
    result = drift._feature_drift(feature, embedding.embed_texts(current), DriftSettings())
    ref_vectors, cur_vectors = embedding.embed_texts(reference), embedding.embed_texts(current)
    distances = [
        stats.wasserstein_distance(ref_vectors[:, d], cur_vectors[:, d]) / ref_vectors[:, d].std()
        for d in range(embedding.DIMS)
    ]
    assert result.method == "wasserstein"
    assert result.score == pytest.approx(max(distances), rel=1e-9)
    assert result.drifted == (max(distances) >= 0.1)


def test_same_lengths_other_words_drift_through_the_embedding_only() -> None:
    """What length and token counts cannot see: texts of the same shape in another vocabulary."""
    reference = sentences(ENGLISH, 400, 7)
    profile = build_profile({"review": reference}, TEXT)
    lengths = {len(t) for t in reference}
    rng = np.random.default_rng(8)
    # Reference texts with each word's letters shuffled: the same lengths and token counts.
    shuffled = np.array(
        [" ".join("".join(rng.permutation(list(w))) for w in t.split(" ")) for t in reference[:200]],
        dtype=object,
    )
    report = drift.compare(profile, {"review": shuffled}, DriftSettings())
    verdicts = {f.name: f.drifted for f in report.features}
    assert verdicts == {"review.embedding": True, "review.length": False, "review.tokens": False}
    assert {len(t) for t in shuffled} <= lengths
    assert report.features[0].name == "review.embedding"  # worst first


def test_shipyard_drift_charts_the_worst_dimension_and_names_it() -> None:
    from shipyard.cli._drift_render import chart

    profile = build_profile({"review": sentences(ENGLISH, 200, 9)}, TEXT)
    report = drift.compare(profile, {"review": sentences(FRENCH, 100, 10)}, DriftSettings())
    worst = report.features[0].to_dict()
    assert worst["name"] == "review.embedding" and worst["kind"] == "embedding"
    component = worst["histogram"]["component"]
    assert chart(worst)[0] == (
        f"review.embedding: ks {worst['score']:.2e}, drifted (worst dimension: {component})"
    )


# --- an embedding model's own vectors ------------------------------------------------------

EMBEDDER = Signature((TensorSpec("text", "BYTES", (-1,)),), (TensorSpec("embedding", "FP32", (-1, 24)),))


def test_model_vectors_are_projected_by_the_documented_matrix() -> None:
    vectors = np.random.default_rng(11).normal(size=(40, 24)).astype(np.float32)
    vectors[3] = 0.0  # no direction: missing
    matrix = np.array(
        [[1.0 if (splitmix(j) >> d) & 1 else -1.0 for d in range(embedding.DIMS)] for j in range(24)]
    )
    keep = np.arange(40) != 3
    wide = vectors[keep].astype(np.float64)
    unit = wide / np.linalg.norm(wide, axis=1, keepdims=True)
    got = embedding.project_vectors(vectors)
    np.testing.assert_allclose(got[keep], unit @ matrix, rtol=1e-12, atol=1e-12)
    assert np.isnan(got[3]).all()


def test_a_profile_with_the_models_vectors_judges_them_as_scipy_would() -> None:
    rng = np.random.default_rng(12)
    texts = sentences(ENGLISH, 200, 13)
    reference_vectors = rng.normal(size=(200, 24)).astype(np.float32)
    profile = build_profile({"text": texts}, EMBEDDER, outputs={"embedding": reference_vectors})
    stored = Profile.from_dict(json.loads(json.dumps(profile.to_dict(), allow_nan=False))).check(
        EMBEDDER, "e:1"
    )
    assert stored.outputs == {"embedding"}
    (vector,) = [f for f in stored.features if f.derive == "output"]
    assert (vector.name, vector.kind, vector.count) == ("output.embedding", "embedding", 200)
    current_vectors = (rng.normal(size=(120, 24)) + np.eye(24)[0] * 0.8).astype(np.float32)  # moved
    current = {"text": sentences(ENGLISH, 120, 14), output_key("embedding"): current_vectors}
    result = next(
        f for f in drift.compare(stored, current, DriftSettings()).features if f.name == vector.name
    )
    ref_projected = embedding.project_vectors(reference_vectors)
    cur_projected = embedding.project_vectors(current_vectors)
    p_values = [
        stats.ks_2samp(ref_projected[:, d], cur_projected[:, d], method="asymp").pvalue
        for d in range(embedding.DIMS)
    ]
    assert result.score == pytest.approx(min(1.0, min(p_values) * embedding.DIMS), rel=1e-9, abs=1e-300)
    assert result.drifted
    # Without the model's outputs (inputs from a file, say), there is nothing to judge it on.
    offline = drift.compare(stored, {"text": current["text"]}, DriftSettings())
    assert next(f for f in offline.features if f.name == vector.name).score is None


def test_a_profile_of_vectors_the_model_does_not_return_is_refused() -> None:
    profile = build_profile(
        {"text": sentences(ENGLISH, 50, 1)}, EMBEDDER, outputs={"embedding": np.ones((50, 24), np.float32)}
    )
    other = Signature(EMBEDDER.inputs, (TensorSpec("logits", "FP32", (-1, 2)),))
    with pytest.raises(InvalidInputError, match="describes input"):
        profile.check(other, "e:1")
