"""The manifests' pure parts: the YAML emitter (read back by a real YAML parser), Kubernetes
quantities and names, and the sizing rules of the startup probe and memory."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from shipyard.deploy import kube, yaml_text
from shipyard.deploy.kube_values import check_label, quantity_value
from shipyard.errors import InvalidInputError
from shipyard.types import ModelVersion, Signature

_TRICKY = [
    "true",
    "no",
    "Yes",
    "off",
    "y",
    "null",
    "~",
    "8080",
    "1e3",
    "0x1f",
    "-",
    "a: b",
    "#x",
    "'q'",
    '"d"',
]
_scalars = st.none() | st.booleans() | st.integers() | st.text() | st.sampled_from([*_TRICKY, "", " x"])
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=12), _documents, max_size=5))
def test_yaml_reads_back_as_written(document: dict[str, Any]) -> None:
    assert yaml.safe_load(yaml_text.dump(document)) == (document or None)


def test_yaml_keeps_strings_that_look_like_other_types_strings() -> None:
    text = yaml_text.dump({"a": "true", "b": "8080", "c": "no", "d": "iris:3", "e": "/readyz"})
    assert text == 'a: "true"\nb: "8080"\nc: "no"\nd: "iris:3"\ne: /readyz\n'


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", 0.5),
        ("2", 2.0),
        ("1.5", 1.5),
        ("512Mi", 512 * 2**20),
        ("4Gi", 4 * 2**30),
        ("1k", 1000.0),
        ("1e3", 1000.0),
    ],
)
def test_quantities_kubernetes_accepts(text: str, value: float) -> None:
    assert quantity_value(text, "cpu") == pytest.approx(value)


@pytest.mark.parametrize("text", ["2x", "12Q", "", "Gi", "1 Gi", "1.2.3", "-1", "0", "1gi"])
def test_quantities_kubernetes_refuses(text: str) -> None:
    with pytest.raises(InvalidInputError):
        quantity_value(text, "memory")


@pytest.mark.parametrize("name", ["default", "ml-serving", "a", "0team", "a" * 63])
def test_namespace_names_kubernetes_accepts(name: str) -> None:
    assert check_label(name, "namespace") == name


@pytest.mark.parametrize("name", ["ML", "ml_serving", "-ml", "ml-", "a" * 64, "ml.team", ""])
def test_namespace_names_kubernetes_refuses(name: str) -> None:
    with pytest.raises(InvalidInputError, match="not a name Kubernetes accepts"):
        check_label(name, "namespace")


def _spec(size: int, **options: Any) -> kube.KubeSpec:
    version = ModelVersion("big", 1, "onnx", "sha256:" + "ab" * 32, size, (), Signature((), ()))
    return kube.KubeSpec((version,), ("big:1",), "img:1", "shipyard-big", "default", "0.1.0", **options)


def test_the_startup_budget_grows_with_the_artifacts() -> None:
    small, large = _spec(1000), _spec(5 * 10**9)  # 1 kB: 30 s + 1 s, in 5 s steps; 5 GB: 30 s + 200 s
    assert small.startup_failure_threshold * kube.PROBE_PERIOD_S == 35
    assert large.startup_failure_threshold * kube.PROBE_PERIOD_S == 230


def test_memory_defaults_to_twice_the_artifacts_and_follows_the_option() -> None:
    assert _spec(1000).memory_quantity == "1Gi"
    assert _spec(2**30).memory_quantity == "2560Mi"  # 512Mi + 2 x 1Gi
    assert _spec(2**30, memory="3Gi").memory_quantity == "3Gi"


def test_the_grace_period_is_the_drain_plus_the_pause() -> None:
    assert _spec(1, grace_period_s=12.5).termination_grace_s == 13 + kube.PRESTOP_S
