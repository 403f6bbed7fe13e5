"""A version's reference profile: what its inputs looked like, kept as JSON with the version.

Drift is measured against this profile, never against the raw reference data (which may be
large or private), so it keeps what the drift methods need:

- numeric features: the empirical CDF exactly at up to `RESOLUTION` + 1 points (every distinct
  value when there are no more, else the distinct values of the quantile grid), mean, std, range,
  and a histogram on fixed edges with a bucket below and above them;
- categorical features (text whose values repeat, numbers with at most `CATEGORICAL_UNIQUE`
  distinct values, as Evidently decides): counts of the `MAX_CATEGORIES` most frequent
  values, the rest counted as `OTHER`;
- text (values mostly distinct): the length and whitespace-token count of each value, as two
  numeric features, and an embedding summary: each value's `embedding.DIMS` components of a
  hashed trigram embedding (`monitor.embedding`), each profiled as a numeric feature, together
  one feature of kind `embedding`;
- inputs too wide to watch column by column (images, embeddings): each row's mean and std;
- an embedding model's output vectors (an output named as in `EMBEDDING_OUTPUTS`), when the
  reference's outputs are given (`shipyard profile` runs the model for them): projected like
  text embeddings (`embedding.project_vectors`), one feature `output.NAME` of kind `embedding`.

Between two stored CDF points the true CDF rises by less than 1/RESOLUTION, which bounds the
error of the drift methods that use it (see `monitor.drift`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from shipyard.errors import InvalidInputError
from shipyard.monitor import embedding
from shipyard.tensors import numpy_dtype
from shipyard.types import Signature

SCHEMA = 2  # 2 added text embeddings; a profile of schema 1 is read as it was
_READABLE = frozenset({1, SCHEMA})
RESOLUTION = 200  # CDF intervals per numeric feature: KS statistic error < 1/200
CATEGORICAL_UNIQUE = 5  # numbers with this many distinct values or fewer are categories
MAX_CATEGORIES = 20  # categories kept by name; the rest count as OTHER
MAX_COLUMNS = 100  # wider inputs are watched through each row's mean and std
MAX_FEATURES = 100
OTHER = "(other)"
_TAIL = 0.005  # histogram edges span the reference's 0.5%-99.5% quantiles; the tails get a bucket each

Kind = Literal["numeric", "categorical", "embedding"]
Derive = Literal["length", "tokens", "embedding", "output", "mean", "std"]
EMBEDDING_OUTPUTS = ("embedding", "embeddings", "sentence_embedding")  # as optimize.scoring reads them


@dataclass(frozen=True)
class Feature:
    """One watched feature: where it comes from in a request, and its reference distribution."""

    name: str
    input: str
    index: int | None  # the column of a 2-D input; None for a 1-D input or a per-row summary
    # text length/tokens/embedding, a wide input's per-row mean/std, or "output": `input` names an
    # output of the model (its embeddings), not an input
    derive: Derive | None
    kind: Kind
    count: int  # reference values (missing ones excluded)
    missing: int
    # numeric
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    max: float = 0.0
    cdf_x: np.ndarray = field(default_factory=lambda: np.empty(0))
    cdf_count: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    # Exact: cdf_x holds every distinct value. Else they are quantiles 1/resolution apart.
    cdf_exact: bool = True
    resolution: int = RESOLUTION
    edges: np.ndarray = field(default_factory=lambda: np.empty(0))
    buckets: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # len(edges) + 1
    # categorical
    categories: dict[str, int] = field(default_factory=dict)
    # embedding: one numeric feature per dimension
    components: tuple[Feature, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "input": self.input,
            "index": self.index,
            "derive": self.derive,
            "kind": self.kind,
            "count": self.count,
            "missing": self.missing,
        }
        if self.kind == "categorical":
            out["categories"] = dict(self.categories)
        elif self.kind == "embedding":
            scheme = embedding.VECTOR_SCHEME if self.derive == "output" else embedding.SCHEME
            out["embedding"] = {"scheme": scheme, "dims": len(self.components)}
            out["components"] = [c.to_dict() for c in self.components]
        elif self.count:
            out.update(mean=self.mean, std=self.std, min=self.min, max=self.max)
            out["cdf"] = {
                "x": self.cdf_x.tolist(),
                "count": self.cdf_count.tolist(),
                "exact": self.cdf_exact,
                "resolution": self.resolution,
            }
            out["histogram"] = {"edges": self.edges.tolist(), "counts": self.buckets.tolist()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Feature:
        common = {
            "name": str(data["name"]),
            "input": str(data["input"]),
            "index": None if data.get("index") is None else int(data["index"]),
            "derive": data.get("derive"),
            "kind": data["kind"],
            "count": int(data["count"]),
            "missing": int(data["missing"]),
        }
        if data["kind"] == "categorical":
            return cls(**common, categories={str(k): int(v) for k, v in data["categories"].items()})
        if data["kind"] == "embedding":
            scheme = data["embedding"]["scheme"]
            expected = embedding.VECTOR_SCHEME if common["derive"] == "output" else embedding.SCHEME
            if scheme != expected:
                raise ValueError(f"embedding summary {scheme!r} is not {expected!r}")
            return cls(**common, components=tuple(cls.from_dict(c) for c in data["components"]))
        if not common["count"]:
            return cls(**common)
        return cls(
            **common,
            mean=float(data["mean"]),
            std=float(data["std"]),
            min=float(data["min"]),
            max=float(data["max"]),
            cdf_x=np.asarray(data["cdf"]["x"], dtype=np.float64),
            cdf_count=np.asarray(data["cdf"]["count"], dtype=np.int64),
            cdf_exact=bool(data["cdf"]["exact"]),
            resolution=int(data["cdf"]["resolution"]),
            edges=np.asarray(data["histogram"]["edges"], dtype=np.float64),
            buckets=np.asarray(data["histogram"]["counts"], dtype=np.int64),
        )


@dataclass(frozen=True)
class Profile:
    """The reference profile of one version's inputs (see the module docstring)."""

    rows: int
    features: tuple[Feature, ...]
    source: str = ""
    left_out: int = 0  # features past MAX_FEATURES, not watched

    @property
    def summarised(self) -> frozenset[str]:
        """Inputs watched through per-row summaries: the live window keeps only those."""
        return frozenset(f.input for f in self.features if f.derive in ("mean", "std"))

    @property
    def outputs(self) -> frozenset[str]:
        """The model outputs watched (an embedding model's vectors): the live window keeps those."""
        return frozenset(f.input for f in self.features if f.derive == "output")

    def check(self, signature: Signature, ref: str) -> Profile:
        """This profile, if it describes inputs of `signature` (a profile stored by hand may not)."""
        names = {spec.name for spec in signature.inputs}
        unknown = sorted({f.input for f in self.features if f.derive != "output"} - names)
        unknown += sorted(self.outputs - {spec.name for spec in signature.outputs})
        if unknown:
            raise InvalidInputError(
                f"the reference profile of {ref} describes input(s) {', '.join(unknown)}, which it does "
                f"not take ({', '.join(sorted(names))}); compute it again with `shipyard profile {ref} FILE`",
                field="profile",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "rows": self.rows,
            "source": self.source,
            "left_out": self.left_out,
            "features": [f.to_dict() for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        if not isinstance(data, Mapping) or data.get("schema") not in _READABLE:
            schema = data.get("schema") if isinstance(data, Mapping) else None
            raise InvalidInputError(
                f"reference profile schema {schema!r} is not one this Shipyard reads ({SCHEMA}); "
                "compute it again with `shipyard profile REF FILE`",
                field="profile",
            )
        try:
            features = tuple(Feature.from_dict(f) for f in data["features"])
            return cls(int(data["rows"]), features, str(data.get("source", "")), int(data.get("left_out", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"the stored reference profile is damaged ({type(exc).__name__}: {exc}); compute it "
                "again with `shipyard profile REF FILE`",
                field="profile",
            ) from exc


def build_profile(
    inputs: Mapping[str, np.ndarray],
    signature: Signature,
    *,
    names: Mapping[str, Sequence[str]] | None = None,
    source: str = "",
    outputs: Mapping[str, np.ndarray] | None = None,
) -> Profile:
    """The profile of reference `inputs` (one array per signature input, rows on axis 0).

    `names` gives the column names of 2-D inputs (e.g. a CSV file's header); else features
    are named `input[j]`. `outputs`, the model's outputs on those inputs, add the summary of an
    embedding model's vectors (`embedding_output`).
    """
    missing = [spec.name for spec in signature.inputs if spec.name not in inputs]
    if missing:
        raise InvalidInputError(f"the reference lacks the input(s) {', '.join(missing)}", field="reference")
    lengths = {len(inputs[spec.name]) for spec in signature.inputs}
    if len(lengths) > 1:
        raise InvalidInputError(
            f"the reference's inputs have different row counts ({sorted(lengths)})", field="reference"
        )
    rows = lengths.pop() if lengths else 0
    if not rows:
        raise InvalidInputError("the reference has no rows", field="reference")
    # Numbers as the model receives them: 0.2 as FP32 is not 0.2 as FP64, and a profile of the
    # wider values would see every live value of an atom like 0.2 as shifted.
    inputs = {
        spec.name: inputs[spec.name].astype(numpy_dtype(spec.datatype))
        if spec.datatype in ("FP16", "FP32") and inputs[spec.name].dtype.kind == "f"
        else inputs[spec.name]
        for spec in signature.inputs
    }
    planned: list[tuple[str, str, int | None, Derive | None]] = []
    for spec in signature.inputs:
        planned.extend(_plan(spec.name, spec.datatype, inputs[spec.name], (names or {}).get(spec.name)))
    features: list[Feature] = []
    used = 0
    for name, input_name, index, derive in planned:
        if len(features) >= MAX_FEATURES:
            break
        used += 1
        values = _raw_column(inputs[input_name], index, derive)
        if values.dtype == object:
            features.extend(_text_features(name, input_name, index, values))
        else:
            features.append(_numeric_feature(name, input_name, index, derive, values))
    left_out = len(planned) - used + max(0, len(features) - MAX_FEATURES)
    kept = features[:MAX_FEATURES]
    watched = embedding_output(signature)
    if outputs is not None and watched is not None and watched in outputs:
        if len(outputs[watched]) != rows:
            raise InvalidInputError(
                f"the reference has {rows} rows but {len(outputs[watched])} {watched!r} outputs",
                field="reference",
            )
        kept.append(_vector_feature(watched, outputs[watched]))
    return Profile(rows, tuple(_unique_names(kept)), source, left_out)


def embedding_output(signature: Signature) -> str | None:
    """The output of an embedding model (a float matrix named as in EMBEDDING_OUTPUTS), if any."""
    for spec in signature.outputs:
        if (
            spec.name.lower() in EMBEDDING_OUTPUTS
            and spec.datatype.startswith(("FP", "BF"))
            and len(spec.shape) == 2
        ):
            return spec.name
    return None


def output_key(output_name: str) -> str:
    """Where a live window keeps a watched output of the model, beside the inputs."""
    return f"{output_name}\x00output"


def _vector_feature(output_name: str, vectors: np.ndarray) -> Feature:
    projected = embedding.project_vectors(vectors)
    return _embedding_feature(f"output.{output_name}", output_name, None, projected, derive="output")


def _plan(
    input_name: str, datatype: str, array: np.ndarray, names: Sequence[str] | None
) -> list[tuple[str, str, int | None, Derive | None]]:
    """(feature name, input, column, derivation) for each feature of one input."""
    if array.ndim <= 1:
        return [(input_name, input_name, None, None)]
    width = math.prod(array.shape[1:])
    if width > MAX_COLUMNS and datatype != "BYTES":
        return [(f"{input_name}.{d}", input_name, None, d) for d in ("mean", "std")]
    labels = list(names) if names is not None and len(names) == width else None
    if width == 1:
        return [(labels[0] if labels else input_name, input_name, 0, None)]
    return [
        (labels[j] if labels else f"{input_name}[{j}]", input_name, j, None)
        for j in range(min(width, MAX_FEATURES))
    ]


def _unique_names(features: list[Feature]) -> list[Feature]:
    seen: set[str] = set()
    out = []
    for feature in features:
        name, n = feature.name, 2
        while name in seen:
            name, n = f"{feature.name}#{n}", n + 1
        seen.add(name)
        out.append(feature if name == feature.name else replace(feature, name=name))
    return out


def summarise(array: np.ndarray) -> np.ndarray:
    """Each row's mean and std, as a (rows, 2) array: how wide inputs are watched."""
    flat = np.asarray(array, dtype=np.float64).reshape(len(array), -1)
    with np.errstate(invalid="ignore"):
        return np.stack([flat.mean(axis=1), flat.std(axis=1)], axis=1)


def summary_key(input_name: str) -> str:
    """Where a live window keeps a wide input's per-row summary instead of the input itself."""
    return f"{input_name}\x00summary"


def _raw_column(array: np.ndarray, index: int | None, derive: Derive | None) -> np.ndarray:
    """One feature's per-row values: float64 numbers, or an object array of text/categories."""
    if derive in ("mean", "std"):
        return summarise(array)[:, 0 if derive == "mean" else 1]
    column = array if array.ndim <= 1 else array.reshape(len(array), -1)[:, index or 0]
    if column.dtype.kind in "OUS":
        return column.astype(object)
    return column.astype(np.float64)


def column(feature: Feature, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The feature's values in `arrays` (request inputs, or a live window's kept arrays): float64
    numbers ((rows, dims) for an embedding), or, for a categorical feature, its text keys (None
    when missing), so columns of any origin concatenate into one."""
    values = _values(feature, arrays)
    return category_keys(values) if feature.kind == "categorical" else values


def _values(feature: Feature, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    if feature.derive == "output":
        vectors = arrays.get(output_key(feature.input))
        if vectors is None:  # inputs without the model's outputs (a file): nothing to compare
            return np.full((len(next(iter(arrays.values()), ())), embedding.DIMS), np.nan)
        return embedding.project_vectors(vectors)
    if feature.derive in ("mean", "std"):
        kept = arrays.get(summary_key(feature.input))
        summary = kept if kept is not None else summarise(arrays[feature.input])
        return summary[:, 0 if feature.derive == "mean" else 1]
    values = _raw_column(arrays[feature.input], feature.index, None)
    if feature.derive == "length":
        return np.array([_length(v) for v in values], dtype=np.float64)
    if feature.derive == "tokens":
        return np.array([_tokens(v) for v in values], dtype=np.float64)
    if feature.derive == "embedding":
        return embedding.embed_texts(values)
    return values


def category_keys(values: np.ndarray) -> np.ndarray:
    """Values as the text keys categories are counted under; missing values become None."""
    if values.dtype != object:
        unique, inverse = np.unique(values, return_inverse=True)
        keys = np.array([None if math.isnan(u) else _number_key(u) for u in unique], dtype=object)
        return keys[inverse.reshape(-1)] if len(unique) else np.empty(0, dtype=object)
    return np.array([_text_key(v) for v in values], dtype=object)


def _number_key(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(float(value))


def _text_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, str) else str(value)


def _length(value: Any) -> float:
    if value is None:
        return math.nan
    return float(len(value))


def _tokens(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (str, bytes)):
        return float(len(value.split()))
    return float(len(value))  # pre-tokenized text: a list of token ids


def _text_features(name: str, input_name: str, index: int | None, values: np.ndarray) -> list[Feature]:
    """Categories when values repeat (each twice on average: a `city` column), else text,
    watched through its length and token count."""
    keys = category_keys(values)
    present = [k for k in keys if k is not None]
    distinct = len(set(present))
    tokenized = any(isinstance(v, (list, tuple)) for v in values)
    if not tokenized and distinct * 2 <= len(present):
        return [_categorical_feature(name, input_name, index, None, keys)]
    derived: list[Feature] = []
    for derive in ("length", "tokens"):
        numbers = np.array(
            [_length(v) if derive == "length" else _tokens(v) for v in values], dtype=np.float64
        )
        derived.append(_numeric_feature(f"{name}.{derive}", input_name, index, derive, numbers))
    if not tokenized:
        vectors = embedding.embed_texts(values)
        derived.append(
            _embedding_feature(f"{name}.embedding", input_name, index, vectors, derive="embedding")
        )
    return derived


def _embedding_feature(
    name: str, input_name: str, index: int | None, vectors: np.ndarray, derive: Derive
) -> Feature:
    """Each dimension of the embeddings as a numeric feature (never a categorical one, so every
    dimension is judged by the same method)."""
    components = tuple(
        _numeric_feature(f"{name}[{d}]", input_name, index, None, vectors[:, d], categories=False)
        for d in range(vectors.shape[1])
    )
    missing = int(np.isnan(vectors[:, 0]).sum())
    return Feature(
        name,
        input_name,
        index,
        derive,
        "embedding",
        len(vectors) - missing,
        missing,
        components=components,
    )


def _categorical_feature(
    name: str, input_name: str, index: int | None, derive: Derive | None, keys: np.ndarray
) -> Feature:
    present = keys[keys != None]  # noqa: E711 - elementwise comparison on an object array
    counts: dict[str, int] = {}
    for key in present:
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[:MAX_CATEGORIES])
    rest = sum(c for _, c in ranked[MAX_CATEGORIES:])
    if rest:
        kept[OTHER] = kept.get(OTHER, 0) + rest
    return Feature(
        name,
        input_name,
        index,
        derive,
        "categorical",
        len(present),
        len(keys) - len(present),
        categories=kept,
    )


def _numeric_feature(
    name: str,
    input_name: str,
    index: int | None,
    derive: Derive | None,
    values: np.ndarray,
    *,
    categories: bool = True,
) -> Feature:
    finite = values[np.isfinite(values)]
    missing = len(values) - len(finite)
    unique = np.unique(finite)
    if categories and 0 < len(unique) <= CATEGORICAL_UNIQUE:
        return _categorical_feature(name, input_name, index, derive, category_keys(values))
    if not len(finite):
        return Feature(name, input_name, index, derive, "numeric", 0, missing)
    ordered = np.sort(finite)
    if len(unique) <= RESOLUTION + 1:
        points = unique
    else:
        grid = np.linspace(0.0, 1.0, RESOLUTION + 1)
        points = np.unique(np.quantile(ordered, grid, method="inverted_cdf"))
    cdf_count = np.searchsorted(ordered, points, side="right")
    edges = _edges(ordered)
    buckets = np.bincount(np.searchsorted(edges, ordered, side="right"), minlength=len(edges) + 1)
    return Feature(
        name,
        input_name,
        index,
        derive,
        "numeric",
        len(ordered),
        missing,
        mean=float(ordered.mean()),
        std=float(ordered.std()),
        min=float(ordered[0]),
        max=float(ordered[-1]),
        cdf_x=points.astype(np.float64),
        cdf_count=cdf_count.astype(np.int64),
        cdf_exact=len(points) == len(unique),
        edges=edges,
        buckets=buckets.astype(np.int64),
    )


def _edges(ordered: np.ndarray) -> np.ndarray:
    """Equal-width edges over the reference's central 99% (Sturges' count of bins, 5 to 30)."""
    bins = min(30, max(5, math.ceil(math.log2(len(ordered))) + 1))
    low, high = np.quantile(ordered, [_TAIL, 1 - _TAIL])
    if not high > low:
        low, high = ordered[0], ordered[-1]
    return np.unique(np.linspace(float(low), float(high), bins + 1))
