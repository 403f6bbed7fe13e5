"""Checks of the decision-tree arrays in a loaded scikit-learn model.

scikit-learn walks a tree's node arrays in compiled code without bounds checks, so a crafted file
with a child or feature index out of range reads or writes outside memory on the first prediction
(skops distrusts `Tree` and `TreePredictor` for this reason). Shipyard trusts them only after
these checks, which mirror how scikit-learn builds trees: children come after their parent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, UntrustedArtifactError

TREE_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)
_LEAF = -1  # scikit-learn's TREE_LEAF
_UNDEFINED_FEATURE = -2  # scikit-learn's TREE_UNDEFINED, the feature of a leaf


class TreeCheckError(InvalidInputError):
    """A tree's arrays are inconsistent: predicting with it could crash the process."""


def _children(value: Any, where: str) -> Iterator[tuple[Any, str]]:
    if isinstance(value, dict):
        yield from ((v, f"{where}[{k!r}]") for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        yield from ((v, f"{where}[{i}]") for i, v in enumerate(value))
    elif isinstance(value, (set, frozenset)):
        yield from ((v, where) for v in value)
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            yield from ((v, f"{where}[{i}]") for i, v in enumerate(value.ravel()))
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        yield from ((v, f"{where}.{k}") for k, v in vars(value).items())


def _width(obj: Any) -> int | None:
    width = vars(obj).get("n_features_in_") if hasattr(obj, "__dict__") else None
    return int(width) if isinstance(width, (int, np.integer)) else None


def check_trees(model: Any, *, trust: bool) -> bool:
    """Raise TreeCheckError if any tree reachable from `model` could index out of range. Splits
    Shipyard cannot check need `trust`; returns whether the model relied on it."""
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree._tree import Tree

    relied_on_trust = False
    seen: set[int] = set()
    # (object, the narrowest input width an enclosing estimator validates, where it sits)
    stack: list[tuple[Any, int | None, str]] = [(model, None, type(model).__name__)]
    while stack:
        obj, width, where = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Tree):
            _check_tree(obj, width, where)
            continue
        if isinstance(obj, TreePredictor):
            relied_on_trust |= _check_predictor(obj, width, where, trust)
            continue
        own = _width(obj)
        if own is not None:
            # An ensemble calls its members' trees on the input it validated itself, so a
            # member's trees must stay within the narrower of the two widths.
            width = own if width is None else min(width, own)
        _check_ensemble_shape(obj, where)
        stack.extend((child, width, path) for child, path in _children(obj, where))
    return relied_on_trust


def _check_ensemble_shape(obj: Any, where: str) -> None:
    # Gradient boosting writes stage k's output into column k of an array sized by
    # n_trees_per_iteration_, without bounds checks.
    estimators = vars(obj).get("estimators_") if hasattr(obj, "__dict__") else None
    per_iteration = vars(obj).get("n_trees_per_iteration_") if hasattr(obj, "__dict__") else None
    if (
        isinstance(estimators, np.ndarray)
        and estimators.ndim == 2
        and per_iteration is not None
        and estimators.shape[1] != int(per_iteration)
    ):
        raise _refuse(
            where, f"{estimators.shape[1]} trees per stage but n_trees_per_iteration_ is {per_iteration}"
        )


def _refuse(where: str, problem: str) -> TreeCheckError:
    return TreeCheckError(
        f"the tree at {where} is malformed ({problem}), so predicting with it could crash the "
        "process; the file is damaged or crafted: save the model again with skops.io.dump",
        field="path",
    )


def _check_tree(tree: Any, width: int | None, where: str) -> None:
    count = int(tree.node_count)
    n_features = int(tree.n_features)
    if count < 1:
        raise _refuse(where, "no nodes")
    if width is not None and n_features > width:
        raise _refuse(where, f"it reads {n_features} features but its estimator takes {width}")
    left = np.asarray(tree.children_left)
    right = np.asarray(tree.children_right)
    feature = np.asarray(tree.feature)
    threshold = np.asarray(tree.threshold)
    if any(a.shape != (count,) for a in (left, right, feature, threshold)):
        raise _refuse(where, f"node arrays do not all have node_count={count} entries")
    value = np.asarray(tree.value)
    if value.shape != (count, int(tree.n_outputs), int(tree.max_n_classes)):
        raise _refuse(where, f"values have shape {list(value.shape)}")
    n_classes = np.asarray(tree.n_classes)
    if n_classes.shape != (int(tree.n_outputs),) or (n_classes > int(tree.max_n_classes)).any():
        raise _refuse(where, "n_classes does not match the values")
    index = np.arange(count)
    leaf = (left == _LEAF) & (right == _LEAF)
    split = ~leaf
    _check_split_nodes(where, index, left, right, split, count)
    if ((feature[split] < 0) | (feature[split] >= n_features)).any():
        raise _refuse(where, f"a split feature is outside [0, {n_features})")
    if ((feature[leaf] < _UNDEFINED_FEATURE) | (feature[leaf] >= n_features)).any():
        raise _refuse(where, f"a leaf's feature is outside [-2, {n_features})")
    if np.isnan(threshold[split]).any():
        raise _refuse(where, "a split threshold is NaN")


def _check_split_nodes(
    where: str, index: np.ndarray, left: np.ndarray, right: np.ndarray, split: np.ndarray, count: int
) -> None:
    # A child numbered after its parent and before node_count: in range, and no cycle.
    for side, children in (("left", left), ("right", right)):
        bad = split & ((children <= index) | (children >= count))
        if bad.any():
            node = int(np.flatnonzero(bad)[0])
            raise _refuse(where, f"node {node}'s {side} child {int(children[node])} is out of range")


def _check_predictor(predictor: Any, width: int | None, where: str, trust: bool) -> bool:
    nodes = np.asarray(predictor.nodes)
    names = nodes.dtype.names or ()
    needed = ("left", "right", "feature_idx", "is_leaf", "is_categorical")
    if nodes.ndim != 1 or len(nodes) == 0 or any(n not in names for n in needed):
        raise _refuse(where, "its node array is not a histogram-gradient-boosting node array")
    index = np.arange(len(nodes))
    split = nodes["is_leaf"] == 0
    _check_split_nodes(where, index, nodes["left"], nodes["right"], split, len(nodes))
    feature = nodes["feature_idx"]
    if width is None or ((feature[split] < 0) | (feature[split] >= width)).any():
        raise _refuse(where, f"a split feature is outside [0, {width})")
    # Categorical splits index bitsets whose bounds depend on the binning; not checked.
    unchecked = bool((nodes["is_categorical"][split] != 0).any())
    if unchecked and not trust:
        raise UntrustedArtifactError(
            f"the tree at {where} splits on categorical features, whose arrays Shipyard cannot "
            "check for safety; if you trust this model, push it with --trust (recorded on the "
            "version)"
        )
    return unchecked
