"""Operation configs: frozen, validated with one line naming the option, recorded as plain JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shipyard.errors import InvalidInputError
from shipyard.optimize.config import (
    Budget,
    ConvertConfig,
    DistillConfig,
    OperationConfig,
    OptimizeConfig,
    PruneConfig,
    QuantizeConfig,
)


@pytest.mark.parametrize(
    ("config", "values", "field", "message"),
    [
        (PruneConfig, {"sparsity": 1.5}, "sparsity", "--sparsity 1.5: Input should be less than 1"),
        (PruneConfig, {"sparsity": 0}, "sparsity", "greater than 0"),
        (PruneConfig, {"sparsity": float("nan")}, "sparsity", "finite"),
        (QuantizeConfig, {"mode": "fp8"}, "mode", "unknown mode 'fp8'; use dynamic or static"),
        (QuantizeConfig, {"mode": "static"}, "calibration", "--mode static needs --calibration"),
        (QuantizeConfig, {"calibration": "c.csv"}, "calibration", "applies to --mode static only"),
        (ConvertConfig, {"to": "tflite"}, "to", "cannot convert to 'tflite'"),
        (OptimizeConfig, {"objective": "vibes"}, "objective", "unknown objective 'vibes'"),
        (OptimizeConfig, {"min_cosine": 2}, "min_cosine", "--min-cosine 2"),
        (OptimizeConfig, {"max_drop": "lots"}, "max_drop", "is not a number"),
        (DistillConfig, {"student": "{}", "data": "d.csv", "epochs": 0}, "epochs", "--epochs 0"),
        (PruneConfig, {"sparsity": 0.5, "typo": 1}, "typo", "Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_field(
    config: type[OperationConfig], values: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message) as caught:
        config.build(**values)
    assert caught.value.field == field
    assert "\n" not in str(caught.value)


def test_configs_are_frozen_and_recorded_as_json() -> None:
    config = QuantizeConfig.build(mode="static", calibration=Path("calib.csv"), per_channel=True)
    with pytest.raises(ValidationError):
        config.per_channel = False  # type: ignore[misc]
    assert config.recipe() == {
        "operation": "quantize",
        "max_drop": "1%",
        "force": False,
        "mode": "static",
        "per_channel": True,
        "reduce_range": False,
        "calibration": "calib.csv",
    }
    assert config.candidate_name == "int8-static-per-channel"
    assert PruneConfig.build(sparsity=0.25, structured=True).candidate_name == "pruned-structured-25"


@pytest.mark.parametrize(
    ("text", "reference", "allowed"), [("1%", 0.9, 0.009), ("0.02", 0.9, 0.02), ("0", 5.0, 0.0)]
)
def test_budget_allows_relative_or_absolute_drops(text: str, reference: float, allowed: float) -> None:
    assert Budget.parse(text).allowed(reference) == pytest.approx(allowed)
    assert OptimizeConfig.build(max_drop=text).budget == Budget.parse(text)
