"""The options of each optimization operation: frozen, validated once at the edge, and saved in
the recipe of the version they produced, so lineage says exactly how it was made."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shipyard.errors import InvalidInputError

OBJECTIVES = ("latency", "throughput", "size")
DEFAULT_MAX_DROP = "1%"
MIN_COSINE = 0.99  # embeddings must also stay close to the original's, not only score alike

_Config = TypeVar("_Config", bound="OperationConfig")


@dataclass(frozen=True)
class Budget:
    """How far the metric may fall: relative ("1%") or absolute ("0.01") in metric units."""

    value: float
    relative: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Budget:
        raw = str(text).strip()
        relative = raw.endswith("%")
        try:
            value = float(raw[:-1]) / 100 if relative else float(raw)
        except ValueError:
            raise InvalidInputError(
                f"--max-drop {text!r} is not a number: write 1% (relative) or 0.01 (absolute)",
                field="max_drop",
            ) from None
        if not math.isfinite(value) or not 0 <= value < (1 if relative else math.inf):
            raise InvalidInputError(
                f"--max-drop {text!r} must be at least 0 (and under 100%)", field="max_drop"
            )
        return cls(value, relative, raw)

    def allowed(self, reference: float) -> float:
        """The largest acceptable drop for a model whose original scores `reference`."""
        return abs(reference) * self.value if self.relative else self.value

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "value": self.value, "kind": "relative" if self.relative else "absolute"}


class OperationConfig(BaseModel):
    """Options of one operation; `build` turns a validation failure into one line naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    operation: str

    @classmethod
    def build(cls: type[_Config], **values: Any) -> _Config:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            field = str(error["loc"][0]) if error["loc"] else cls.__name__
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] != "value_error":  # pydantic's own wording: say which option and value
                message = f"--{field.replace('_', '-')} {error.get('input')!r}: {message}"
            raise InvalidInputError(message, field=field) from None

    def recipe(self) -> dict[str, Any]:
        """The options as the version's recipe records them (JSON types, paths as text)."""
        return self.model_dump(mode="json")


class StepConfig(OperationConfig):
    """A single step refuses to register a result whose metric fell further than `max_drop`,
    unless forced."""

    max_drop: str = DEFAULT_MAX_DROP
    force: bool = False

    @field_validator("max_drop")
    @classmethod
    def _budget(cls, value: str) -> str:
        return Budget.parse(value).text

    @property
    def budget(self) -> Budget:
        return Budget.parse(self.max_drop)


class ConvertConfig(StepConfig):
    operation: Literal["convert"] = "convert"
    to: str = "onnx"

    @field_validator("to")
    @classmethod
    def _target(cls, value: str) -> str:
        if value != "onnx":
            raise ValueError(f"cannot convert to {value!r}; the only target is onnx")
        return value


class QuantizeConfig(StepConfig):
    operation: Literal["quantize"] = "quantize"
    mode: str = "dynamic"
    per_channel: bool = False
    reduce_range: bool = False
    calibration: Path | None = None

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in ("dynamic", "static"):
            raise ValueError(f"unknown mode {value!r}; use dynamic or static")
        return value

    @model_validator(mode="after")
    def _calibration_matches_mode(self) -> QuantizeConfig:
        if self.mode == "dynamic" and self.calibration is not None:
            raise InvalidInputError("--calibration applies to --mode static only", field="calibration")
        if self.mode == "static" and self.calibration is None:
            raise InvalidInputError(
                "--mode static needs --calibration FILE (representative inputs)", field="calibration"
            )
        return self

    @property
    def candidate_name(self) -> str:
        return (
            f"int8-{self.mode}"
            + ("-per-channel" if self.per_channel else "")
            + ("-reduce-range" if self.reduce_range else "")
        )


class PruneConfig(StepConfig):
    operation: Literal["prune"] = "prune"
    sparsity: float = Field(0.5, gt=0, lt=1, allow_inf_nan=False)
    structured: bool = False

    @property
    def candidate_name(self) -> str:
        return f"pruned-{'structured' if self.structured else 'magnitude'}-{round(self.sparsity * 100)}"


class DistillConfig(StepConfig):
    operation: Literal["distill"] = "distill"
    student: str  # an MLP config (JSON or a .json file) or a scikit-learn version's reference
    data: Path
    epochs: int | None = Field(None, ge=1)


class OptimizeConfig(OperationConfig):
    operation: Literal["optimize"] = "optimize"
    metric: str | None = None  # checked against the eval set once it is loaded
    max_drop: str = DEFAULT_MAX_DROP
    objective: str = "latency"
    calibration: Path | None = None
    min_cosine: float = Field(MIN_COSINE, ge=0, le=1)

    @field_validator("max_drop")
    @classmethod
    def _budget(cls, value: str) -> str:
        return Budget.parse(value).text

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: str) -> str:
        if value not in OBJECTIVES:
            raise ValueError(f"unknown objective {value!r}; use one of {', '.join(OBJECTIVES)}")
        return value

    @property
    def budget(self) -> Budget:
        return Budget.parse(self.max_drop)
