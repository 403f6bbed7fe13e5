"""Task metrics with bootstrap intervals, and agreement between a candidate and the original.

A model's outputs are read by role (labels, class probabilities, embeddings or values), so a
scikit-learn estimator, its ONNX conversion and a quantized variant are scored the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError
from shipyard.optimize.evalset import EvalSet

LABEL_OUTPUTS = ("label", "labels", "output_label", "predicted_label")
PROBABILITY_OUTPUTS = ("probabilities", "scores", "probability", "output_probability", "probs")
EMBEDDING_OUTPUTS = ("embedding", "embeddings", "sentence_embedding")
VALUE_OUTPUTS = ("prediction", "predictions", "variable", "output")
BOOTSTRAP_ROUNDS = 1000


@dataclass
class Outputs:
    """A model's answers on an eval set, by role."""

    labels: np.ndarray | None = None  # normalized to text, comparable across runtimes
    probabilities: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    values: np.ndarray | None = None  # regression

    @property
    def kind(self) -> str:
        if self.embeddings is not None:
            return "embedding"
        if self.labels is not None:
            return "classifier"
        return "regressor"


def label_keys(values: Any) -> np.ndarray:
    """Labels as comparable text: 1, 1.0, b"1" and "1" are one label."""

    def key(v: Any) -> str:
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        try:
            number = float(v)
        except (TypeError, ValueError):
            return str(v)
        return str(int(number)) if number.is_integer() else repr(number)

    return np.array([key(v) for v in np.asarray(values, dtype=object).ravel()], dtype=object)


def interpret(outputs: dict[str, np.ndarray], classes: list[Any] | None = None) -> Outputs:
    """Assign roles to a model's named outputs (see the *_OUTPUTS names)."""
    found = Outputs()
    names = {n.lower(): n for n in outputs}

    def pick(options: tuple[str, ...]) -> str | None:
        return next((names[o] for o in options if o in names), None)

    if (name := pick(EMBEDDING_OUTPUTS)) is not None:
        found.embeddings = np.asarray(outputs[name], dtype=np.float64)
        return found
    label, probs = pick(LABEL_OUTPUTS), pick(PROBABILITY_OUTPUTS)
    if probs is not None:
        found.probabilities = np.asarray(outputs[probs], dtype=np.float64)
    if label is not None:
        found.labels = label_keys(outputs[label])
    elif found.probabilities is not None:
        index = found.probabilities.argmax(axis=1)
        found.labels = label_keys(np.asarray(classes, dtype=object)[index] if classes else index)
    if found.labels is None:
        value = pick(VALUE_OUTPUTS) or (next(iter(outputs)) if len(outputs) == 1 else None)
        if value is None:
            raise InvalidInputError(
                f"cannot tell what the outputs {', '.join(outputs)} are: name them label/"
                "probabilities, embedding, or prediction",
                field="model",
            )
        found.values = np.asarray(outputs[value], dtype=np.float64)
    return found


def concat(parts: list[Outputs]) -> Outputs:
    def join(items: list[np.ndarray | None]) -> np.ndarray | None:
        return None if items[0] is None else np.concatenate([i for i in items if i is not None])

    return Outputs(
        join([p.labels for p in parts]),
        join([p.probabilities for p in parts]),
        join([p.embeddings for p in parts]),
        join([p.values for p in parts]),
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / np.clip(norms, 1e-12, None))


def _spearman(pred: np.ndarray, target: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(pred, target).statistic)


def _pearson(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.corrcoef(pred, target)[0, 1])


def r2_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """R² of `pred` against `truth` (argument order and maths of sklearn.metrics.r2_score):
    computed per output column and averaged; a constant column scores 1 if matched exactly, else 0."""
    truth = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    residual = ((truth - pred) ** 2).sum(axis=0)
    total = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
    safe = np.where(total > 0, total, 1.0)
    scores = np.where(total > 0, 1.0 - residual / safe, (residual == 0).astype(np.float64))
    return float(scores.mean())


def _f1_macro(pred: np.ndarray, target: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(target, pred, average="macro"))


# name → (function of per-unit predictions and targets, higher is better)
METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool]] = {
    "accuracy": (lambda p, t: float(np.mean(p == t)), True),
    "f1_macro": (_f1_macro, True),
    "spearman": (_spearman, True),
    "pearson": (_pearson, True),
    "r2": (lambda p, t: r2_score(t, p), True),
    "mae": (lambda p, t: float(np.mean(np.abs(p - t))), False),
    "cosine_agreement": (lambda p, t: float(np.mean(p)), True),
}


def default_metric(evalset: EvalSet, outputs: Outputs) -> str:
    """Accuracy for classifiers, Spearman for sentence similarity, R² for regressors with
    labels, and agreement with the original model when there is nothing to score against."""
    if evalset.pairs:
        return "spearman" if evalset.scores is not None else "cosine_agreement"
    if evalset.labels is None:
        return "cosine_agreement"
    return "accuracy" if outputs.kind == "classifier" else "r2"


def check_metric(metric: str, evalset: EvalSet, outputs: Outputs) -> None:
    if metric not in METRICS:
        raise InvalidInputError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", field="metric")
    if metric == "cosine_agreement":
        if outputs.kind == "classifier":
            raise InvalidInputError(
                "cosine_agreement compares embeddings or values; this model is a classifier: "
                "give the eval file a label column and use accuracy",
                field="metric",
            )
        return
    if evalset.pairs:
        if evalset.scores is None:
            raise InvalidInputError(
                "the eval pairs have no score column (score or similarity); without one only "
                "cosine_agreement can be measured",
                field="eval",
            )
        if metric not in ("spearman", "pearson"):
            raise InvalidInputError(
                f"sentence pairs are scored with spearman or pearson, not {metric}", field="metric"
            )
        return
    if evalset.labels is None:
        raise InvalidInputError(
            f"the eval file has no label column ({', '.join(('label', 'target', 'y', 'class'))} or "
            f"--label NAME), which {metric} needs",
            field="label",
        )
    if outputs.kind == "embedding":
        raise InvalidInputError(
            f"{metric} needs a classifier or regressor; this model returns embeddings",
            field="metric",
        )
    if (metric in ("accuracy", "f1_macro")) != (outputs.kind == "classifier"):
        raise InvalidInputError(
            f"{metric} does not apply to a {outputs.kind}; use "
            + ("accuracy or f1_macro" if outputs.kind == "classifier" else "r2, mae, spearman or pearson"),
            field="metric",
        )


def per_unit(metric: str, evalset: EvalSet, outputs: Outputs, reference: Outputs) -> tuple[np.ndarray, Any]:
    """(predictions, targets) per scoring unit, so the metric can be bootstrapped by resampling."""
    if metric == "cosine_agreement":
        mine = outputs.embeddings if outputs.embeddings is not None else outputs.values
        theirs = reference.embeddings if reference.embeddings is not None else reference.values
        assert mine is not None and theirs is not None
        mine, theirs = mine.reshape(len(mine), -1), theirs.reshape(len(theirs), -1)
        return _cosine(mine, theirs), None
    if evalset.pairs:
        emb = outputs.embeddings if outputs.embeddings is not None else outputs.values
        assert emb is not None and evalset.scores is not None
        emb = emb.reshape(len(emb), -1)
        return _cosine(emb[: evalset.pairs], emb[evalset.pairs :]), evalset.scores
    assert evalset.labels is not None
    if outputs.kind == "classifier":
        return np.asarray(outputs.labels), label_keys(evalset.labels)
    assert outputs.values is not None
    return outputs.values.reshape(len(outputs.values)), evalset.labels.astype(np.float64)


def score(metric: str, pred: np.ndarray, target: Any) -> float:
    return METRICS[metric][0](pred, target)


def bootstrap(
    metric: str, pred: np.ndarray, target: Any, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the metric over resampled eval units."""
    rng = np.random.default_rng(seed)
    n = len(pred)
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, n, n)
        values.append(score(metric, pred[pick], None if target is None else target[pick]))
    finite = np.asarray(values)[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def agreement(reference: Outputs, candidate: Outputs) -> dict[str, float]:
    """How closely a candidate reproduces the original: label flips, cosine or largest difference."""
    result: dict[str, float] = {}
    if reference.labels is not None and candidate.labels is not None:
        result["label_flip_rate"] = float(np.mean(reference.labels != candidate.labels))
    ref_p, cand_p = reference.probabilities, candidate.probabilities
    if ref_p is not None and cand_p is not None and ref_p.shape == cand_p.shape:
        result["max_abs_prob_diff"] = float(np.max(np.abs(ref_p - cand_p)))
    for ref_raw, cand_raw in (
        (reference.embeddings, candidate.embeddings),
        (reference.values, candidate.values),
    ):
        if ref_raw is None or cand_raw is None:
            continue
        ref, cand = ref_raw.reshape(len(ref_raw), -1), cand_raw.reshape(len(cand_raw), -1)
        if ref.shape != cand.shape:
            continue
        diff = np.abs(ref - cand)
        # Relative to the output's scale: elementwise ratios explode where a value is near 0.
        result["max_rel_diff"] = float(diff.max() / max(float(np.abs(ref).max()), 1e-12))
        result["max_abs_diff"] = float(diff.max())
        if ref.shape[1] > 1:
            cos = _cosine(ref, cand)
            result.update(
                cosine_mean=float(cos.mean()),
                cosine_p1=float(np.percentile(cos, 1)),
                cosine_min=float(cos.min()),
            )
    return result
