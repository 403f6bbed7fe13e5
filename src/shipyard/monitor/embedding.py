"""A cheap, deterministic text embedding for drift: no model, the same vector in every process.

Each distinct byte trigram of a text (lowercased, UTF-8, a space added at each end) gets a fixed
pseudo-random vector of ±1 (bits of a 64-bit mix of the trigram); a text's embedding is the sum
of its trigrams' vectors weighted by their counts, divided by the norm of that count vector. That
is a random ±1 projection (Achlioptas, 2003) of the text's normalised trigram counts to `DIMS`
dimensions: each component is roughly standard normal whatever the text's length, and texts of
one kind (a language, a topic, a template) share a region, so a change in what the texts are made
of moves the components' distributions, which drift compares one by one. Length and token counts
are watched on their own; this sees what they cannot (same lengths, other words).

Python's `hash` differs between processes; this mix does not, so a profile computed at push
time and the windows of every worker agree. A text without a trigram (empty) has no embedding:
NaN, counted as missing.

An embedding model's own output vectors are summarised the same way (`project_vectors`): each
row scaled to unit length, then projected by the ±1 matrix whose column for dimension j of the
model's vectors comes from the bits of the same mix of j.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SCHEME = "trigram-pm1-v1"  # stored with the profile: another scheme is not comparable
VECTOR_SCHEME = "vector-pm1-v1"  # a model's own embeddings, projected (`project_vectors`)
DIMS = 8
_GRAM = 3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def mix(keys: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 keys: each input bit flips about half the output bits."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def padded(value: Any) -> bytes | None:
    """The bytes a text's trigrams are taken from; None for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return f" {text.lower()} ".encode()


def embed_texts(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """(rows, DIMS) float64 embeddings of `values`; rows of NaN for missing or empty texts.

    Vectorised over the batch: one pass over all the bytes, whatever the number of texts."""
    encoded = [padded(v) for v in values]
    out = np.full((len(encoded), DIMS), np.nan)
    present = [i for i, b in enumerate(encoded) if b is not None and len(b) >= _GRAM]
    if not present:
        return out
    parts = [encoded[i] or b"" for i in present]
    lengths = np.fromiter(map(len, parts), np.int64, len(parts))
    data = np.frombuffer(b"".join(parts), dtype=np.uint8).astype(np.uint64)
    grams = lengths - (_GRAM - 1)  # trigrams per text, each inside its own text
    row = np.repeat(np.arange(len(parts), dtype=np.uint64), grams)
    first = np.repeat(np.cumsum(lengths) - lengths - (np.cumsum(grams) - grams), grams)
    position = np.arange(int(grams.sum()), dtype=np.int64) + first
    key = (data[position] << np.uint64(16)) | (data[position + 1] << np.uint64(8)) | data[position + 2]
    # One entry per (text, distinct trigram) with its count: a trigram is 24 bits.
    pairs, counts = np.unique((row << np.uint64(24)) | key, return_counts=True)
    rows = (pairs >> np.uint64(24)).astype(np.int64)
    signs = mix(pairs & np.uint64(0xFFFFFF))
    weights = counts.astype(np.float64)
    norms = np.sqrt(np.bincount(rows, weights * weights, minlength=len(parts)))
    result = np.empty((len(parts), DIMS))
    for dim in range(DIMS):
        sign = ((signs >> np.uint64(dim)) & np.uint64(1)).astype(np.float64) * 2.0 - 1.0
        result[:, dim] = np.bincount(rows, weights * sign, minlength=len(parts))
    out[present] = result / norms[:, None]
    return out


def project_vectors(vectors: np.ndarray) -> np.ndarray:
    """(rows, DIMS) float64 projections of a model's (rows, width) embeddings, each row first
    scaled to unit length; rows of NaN where a vector is zero or not finite."""
    flat = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    signs = mix(np.arange(flat.shape[1], dtype=np.uint64))
    matrix = ((signs[:, None] >> np.arange(DIMS, dtype=np.uint64)) & np.uint64(1)).astype(
        np.float64
    ) * 2.0 - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    out: np.ndarray = unit @ matrix
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out
