"""Knowledge distillation of tabular models: train a small student on a teacher's outputs.

Quantization and ONNX conversion keep the model's structure; distillation replaces it. A large teacher
(a forest of hundreds of trees, a boosted ensemble, a wide network) is imitated by a small MLP, or by a
simpler scikit-learn estimator, trained on the teacher's own predictions for the user's inputs — no
ground-truth labels are needed. It is a training loop with its own data, epochs and compute, so it runs
as an explicit job rather than inside a post-training `optimize` call.

The MLP student is a drop-in replacement: it standardizes raw features itself and returns what the teacher
returns — (label, probabilities) for a classifier, the prediction in the teacher's shape for a regressor —
and it exports with `torch.onnx.export(..., dynamo=True)` and a dynamic batch dimension.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError
from shipyard.optimize.scoring import r2_score
from shipyard.packaging.pytorch import import_torch

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

CHUNK_ROWS = 256
_EPS = 1e-8
_ACTIVATIONS = ("relu", "gelu", "tanh")
_DEFAULTS: dict[str, Any] = {
    "kind": "mlp",
    "hidden": [64],
    "activation": "relu",
    "epochs": 30,
    "lr": 1e-3,
    "batch_size": 64,
    "temperature": 2.0,
    "weight_decay": 0.0,
}


def parse_student(spec: str) -> dict[str, Any]:
    """`spec` is inline JSON ('{"kind": "mlp", "hidden": [64]}') or the path of a .json file.

    Validate and fill defaults.
    """
    text = spec.strip()
    if text.startswith("{"):
        where = "inline student spec"
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise InvalidInputError(
                f"student spec file {text!r} does not exist; pass inline JSON such as "
                '\'{"kind": "mlp", "hidden": [64]}\' or the path of a .json file',
                field="student",
            )
        where = f"student spec file {str(path)!r}"
        text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{where} is not valid JSON: {exc}", field="student") from exc
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where} must be a JSON object, got {type(raw).__name__}", field="student")
    return _validate(raw)


def _validate(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(_DEFAULTS))
    if unknown:
        raise InvalidInputError(
            f"unknown student spec key(s) {unknown}; allowed keys: {sorted(_DEFAULTS)}", field="student"
        )
    out = {**_DEFAULTS, **raw}
    if out["kind"] != "mlp":
        raise InvalidInputError(
            f"student kind {out['kind']!r} is not supported; the only kind is 'mlp'", field="student"
        )
    hidden = out["hidden"]
    if not isinstance(hidden, list) or not all(_is_int(h) and h > 0 for h in hidden):
        raise InvalidInputError(
            f"student 'hidden' must be a list of positive integers (layer widths), got {hidden!r}",
            field="student",
        )
    if out["activation"] not in _ACTIVATIONS:
        raise InvalidInputError(
            f"student 'activation' must be one of {list(_ACTIVATIONS)}, got {out['activation']!r}",
            field="student",
        )
    for key in ("epochs", "batch_size"):
        if not (_is_int(out[key]) and out[key] > 0):
            raise InvalidInputError(
                f"student {key!r} must be a positive integer, got {out[key]!r}", field="student"
            )
    for key, low_ok in (("lr", False), ("temperature", False), ("weight_decay", True)):
        value = out[key]
        if not (_is_number(value) and (value >= 0 if low_ok else value > 0)):
            need = "a non-negative number" if low_ok else "a positive number"
            raise InvalidInputError(f"student {key!r} must be {need}, got {value!r}", field="student")
        out[key] = float(value)
    out["hidden"] = list(hidden)
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _as_inputs(inputs: np.ndarray) -> np.ndarray:
    arr = np.asarray(inputs)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.dtype.kind not in "iuf":
        raise InvalidInputError(
            "distillation needs numeric inputs shaped [rows ≥ 2, features], "
            f"got {arr.dtype} {list(arr.shape)}",
            field="inputs",
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InvalidInputError("distillation inputs contain NaN or infinite values", field="inputs")
    return arr


def _ask_teacher(teacher: Predict, inputs: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
    """The teacher's outputs for every row, asked CHUNK_ROWS rows at a time."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(inputs), CHUNK_ROWS):
        chunk = inputs[start : start + CHUNK_ROWS]
        got = teacher({input_name: chunk})
        if not isinstance(got, dict) or not got:
            raise InvalidInputError("the teacher returned no named outputs", field="teacher")
        for name, value in got.items():
            arr = np.asarray(value)
            if arr.ndim == 0 or arr.shape[0] != len(chunk):
                raise InvalidInputError(
                    f"teacher output {name!r} has shape {list(arr.shape)} for {len(chunk)} input rows",
                    field="teacher",
                )
            parts.setdefault(name, []).append(arr)
    return {name: np.concatenate(arrs) for name, arrs in parts.items()}


def _regression_target(outputs: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """A regressor's output: 'prediction', or its only output if that is float."""
    if "prediction" in outputs:
        name = "prediction"
    elif len(outputs) == 1:
        name = next(iter(outputs))
    else:
        raise _not_understood(outputs)
    if outputs[name].dtype.kind != "f":
        raise _not_understood(outputs)
    return name, outputs[name]


def _not_understood(outputs: dict[str, np.ndarray]) -> InvalidInputError:
    return InvalidInputError(
        f"cannot tell what the teacher predicts from its outputs {sorted(outputs)}: distillation needs a "
        "classifier ('label' and 'probabilities') or a regressor ('prediction', or a single float output)",
        field="teacher",
    )


def _class_values(outputs: dict[str, np.ndarray], classes: list[Any] | None) -> np.ndarray:
    """The numeric class value of each probability column."""
    columns = outputs["probabilities"].shape[1]
    if classes is None:
        labels = outputs.get("label")
        values = np.arange(columns) if labels is None else np.unique(labels)
    else:
        values = np.asarray(classes)
    if values.dtype.kind not in "iuf":
        raise InvalidInputError(
            "distillation supports numeric class labels only; "
            f"this teacher's classes are {values.tolist()!r}",
            field="teacher",
        )
    if values.shape != (columns,):
        raise InvalidInputError(
            f"the teacher gives {columns} probability columns but {values.size} classes "
            f"({values.tolist()!r}); pass the classes in column order",
            field="teacher",
        )
    return values.astype(np.int64 if values.dtype.kind in "iu" else np.float64)


def __getattr__(name: str) -> Any:
    """`DistilledMLP` is built on first use (torch is optional) and is then importable and picklable."""
    if name == "DistilledMLP":
        return _student_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _student_class() -> Any:
    torch = import_torch("distillation")

    base: Any = torch.nn.Module

    class DistilledMLP(base):  # type: ignore[misc]
        """Standardize → MLP → the teacher's outputs: (label, probabilities) or the prediction."""

        def __init__(
            self,
            net: Any,
            mean: np.ndarray,
            scale: np.ndarray,
            classes: np.ndarray | None,
            target_mean: np.ndarray,
            target_scale: np.ndarray,
            trailing: tuple[int, ...],
            output_names: tuple[str, ...],
        ) -> None:
            super().__init__()
            self.net = net
            self.classifier = classes is not None
            self.trailing = trailing
            self.output_names = output_names  # the teacher's names for what forward() returns
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("scale", torch.from_numpy(scale))
            self.register_buffer("target_mean", torch.from_numpy(target_mean))
            self.register_buffer("target_scale", torch.from_numpy(target_scale))
            if classes is not None:
                self.register_buffer("classes", torch.from_numpy(classes))

        def logits(self, x: Any) -> Any:
            return self.net((x - self.mean) / self.scale)

        def forward(self, x: Any) -> Any:
            z = self.logits(x)
            if self.classifier:
                label = torch.index_select(self.classes, 0, torch.argmax(z, dim=-1))
                return label, torch.softmax(z, dim=-1)
            return (z * self.target_scale + self.target_mean).reshape((-1, *self.trailing))

    DistilledMLP.__qualname__ = "DistilledMLP"  # resolved through the module's __getattr__
    return DistilledMLP


def _mlp(torch: Any, features: int, hidden: list[int], activation: str, outputs: int) -> Any:
    act = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "tanh": torch.nn.Tanh}[activation]
    layers: list[Any] = []
    width = features
    for size in hidden:
        layers += [torch.nn.Linear(width, size), act()]
        width = size
    layers.append(torch.nn.Linear(width, outputs))
    return torch.nn.Sequential(*layers)


def _scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = values.mean(axis=0, dtype=np.float64)
    std = values.std(axis=0, dtype=np.float64)
    return mean.astype(np.float32), np.where(std > 1e-12, std, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Targets:
    """What the student learns: soft teacher probabilities or standardized teacher values."""

    train: np.ndarray  # float32 [rows, width]
    teacher: np.ndarray  # the teacher's labels (classifier) or values (regressor), to score agreement
    classes: np.ndarray | None  # class value per probability column; None for a regressor
    mean: np.ndarray  # undoes the target standardization (regressor)
    scale: np.ndarray
    trailing: tuple[int, ...]  # the teacher's prediction shape after the batch axis
    names: tuple[str, ...]  # the teacher's output names, in the order the student returns them


def _targets(outputs: dict[str, np.ndarray], classes: list[Any] | None, temperature: float) -> _Targets:
    unit = np.zeros(1, np.float32), np.ones(1, np.float32)
    if "probabilities" in outputs:
        probs = outputs["probabilities"].astype(np.float64)
        if probs.ndim != 2 or probs.shape[1] < 2:
            raise InvalidInputError(
                f"teacher probabilities must be shaped [rows, classes ≥ 2], got {list(probs.shape)}",
                field="teacher",
            )
        values = _class_values(outputs, classes)
        logits = np.log(probs + _EPS) / temperature  # probabilities → logits, softened with T
        soft = np.exp(logits - logits.max(axis=1, keepdims=True))
        soft /= soft.sum(axis=1, keepdims=True)
        labels = outputs.get("label", values[probs.argmax(axis=1)])
        names = ("label", "probabilities")
        return _Targets(soft.astype(np.float32), np.asarray(labels), values, *unit, (), names)
    name, found = _regression_target(outputs)
    flat = found.reshape(len(found), -1).astype(np.float32)
    mean, scale = _scale(flat)
    return _Targets((flat - mean) / scale, found, None, mean, scale, tuple(found.shape[1:]), (name,))


def distill_mlp(
    teacher: Predict,
    inputs: np.ndarray,
    *,
    input_name: str,
    student: dict[str, Any],
    classes: list[Any] | None,
    epochs: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a torch MLP student on the teacher's outputs for `inputs`; return (nn.Module, facts)."""
    spec = _validate({**student} if epochs is None else {**student, "epochs": epochs})
    torch = import_torch("distillation")
    x_np = _as_inputs(inputs)
    targets = _targets(_ask_teacher(teacher, x_np, input_name), classes, spec["temperature"])
    mean, scale = _scale(x_np)
    with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching the caller's RNG
        torch.manual_seed(seed)
        net = _mlp(torch, x_np.shape[1], spec["hidden"], spec["activation"], targets.train.shape[1])
    module = _student_class()(
        net, mean, scale, targets.classes, targets.mean, targets.scale, targets.trailing, targets.names
    )
    final_loss = _train(torch, module, x_np, targets, spec, seed, progress)

    with torch.no_grad():
        got = module(torch.from_numpy(x_np))
    if targets.classes is None:
        agreement = r2_score(targets.teacher, got.numpy())
    else:
        agreement = float(np.mean(got[0].numpy() == targets.teacher))
    facts = {
        "kind": "mlp",
        "hidden": spec["hidden"],
        "activation": spec["activation"],
        "epochs": spec["epochs"],
        "lr": spec["lr"],
        "batch_size": spec["batch_size"],
        "temperature": spec["temperature"],
        "seed": seed,
        "train_rows": len(x_np),
        "final_loss": final_loss,
        "teacher_agreement": agreement,
        "parameters": sum(int(p.numel()) for p in module.parameters()),
    }
    return module, facts


def _train(
    torch: Any,
    module: Any,
    x_np: np.ndarray,
    targets: _Targets,
    spec: dict[str, Any],
    seed: int,
    progress: Callable[[int, int, float], None] | None,
) -> float:
    """Mini-batch AdamW: KL·T² to the softened teacher or MSE on standardized values; the last loss."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"])
    generator = torch.Generator().manual_seed(seed)
    x, want = torch.from_numpy(x_np), torch.from_numpy(targets.train)
    temperature, rows, batch, epochs = spec["temperature"], len(x_np), spec["batch_size"], spec["epochs"]
    final_loss = float("nan")
    module.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(rows, generator=generator)
        summed = 0.0
        for start in range(0, rows, batch):
            idx = order[start : start + batch]
            z = module.logits(x[idx])
            if targets.classes is None:
                loss = torch.nn.functional.mse_loss(z, want[idx])
            else:
                log_student = torch.log_softmax(z / temperature, dim=-1)
                loss = torch.nn.functional.kl_div(log_student, want[idx], reduction="batchmean")
                loss = loss * temperature**2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            summed += float(loss.detach()) * len(idx)
        final_loss = summed / rows
        if progress is not None:
            progress(epoch, epochs, final_loss)
    module.eval()
    return final_loss


def distill_estimator(
    teacher: Predict, inputs: np.ndarray, *, input_name: str, student_estimator: Any
) -> tuple[Any, dict[str, Any]]:
    """Refit a clone of a scikit-learn estimator on the teacher's predicted labels (or values)."""
    from sklearn.base import clone

    x = _as_inputs(inputs)
    outputs = _ask_teacher(teacher, x, input_name)
    classify = "label" in outputs
    target = outputs["label"] if classify else _regression_target(outputs)[1]
    if target.ndim == 2 and target.shape[1] == 1:
        target = target[:, 0]  # scikit-learn wants a 1-D y for a single target
    name = type(student_estimator).__name__
    try:
        estimator = clone(student_estimator)
        estimator.fit(x, target)
        predicted = np.asarray(estimator.predict(x))
    except Exception as exc:
        raise InvalidInputError(f"cannot fit the student {name}: {exc}", field="student") from exc
    if classify:
        agreement = float(np.mean(predicted.reshape(target.shape) == target))
    else:
        agreement = r2_score(target, predicted)
    facts = {"kind": "estimator", "estimator": name, "train_rows": len(x), "teacher_agreement": agreement}
    return estimator, facts
