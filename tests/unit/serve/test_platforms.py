"""Which platform started the container, and what its environment asks of the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.errors import InvalidInputError
from shipyard.serve.platforms import SAGEMAKER_MAX_BODY, VERTEX_MAX_BODY, detect, plan


@pytest.mark.parametrize(
    ("environ", "args", "platform"),
    [
        ({}, ["serve"], "sagemaker"),
        ({"AIP_HTTP_PORT": "8080"}, ["serve"], "sagemaker"),  # SageMaker's argument wins
        ({"AIP_HTTP_PORT": "8080", "AIP_MODE": "PREDICTION"}, [], "vertex"),
        ({"AZUREML_MODEL_DIR": "/var/azureml-app/azureml-models/iris/1"}, [], "azure"),
        ({"SAGEMAKER_BIND_TO_PORT": "9000"}, [], "sagemaker"),
        ({"HOME": "/root"}, ["iris"], "generic"),
    ],
)
def test_detect(environ: dict[str, str], args: list[str], platform: str) -> None:
    assert detect(environ, args) == platform


def test_sagemaker() -> None:
    environ = {
        "SAGEMAKER_BIND_TO_PORT": "9001",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "20",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "30",
        "SAGEMAKER_PROGRAM": "inference.py",
    }
    chosen = plan("sagemaker", environ)
    assert chosen.required == {"platform": "sagemaker", "host": "0.0.0.0", "port": 9001}
    assert chosen.defaults == {
        "max_body_bytes": SAGEMAKER_MAX_BODY,
        "grace_period_s": 25.0,
        "workers": 3,
        "timeout_s": 20.0,
        "log_level": "WARNING",
    }
    assert chosen.model_dirs == [Path("/opt/ml/model")]
    assert chosen.notes == ["SAGEMAKER_PROGRAM ignored"]
    assert not chosen.multi_model
    assert plan("sagemaker", {}).required["port"] == 8080
    multi = plan("sagemaker", {"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_MODEL_SERVER_WORKERS": "4"})
    assert multi.multi_model and multi.required["workers"] == 1 and "workers" not in multi.defaults
    assert multi.notes == ["SAGEMAKER_MODEL_SERVER_WORKERS ignored: multi-model serving runs one worker"]
    batch = plan("sagemaker", {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"})
    assert batch.defaults["max_body_bytes"] == 20 * 1024 * 1024


def test_vertex() -> None:
    environ = {
        "AIP_HTTP_PORT": "7080",
        "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
        "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
        "AIP_STORAGE_URI": "gs://bucket/model",
        "AIP_MODE": "PREDICTION",
        "AIP_DEPLOYED_MODEL_ID": "2",
    }
    chosen = plan("vertex", environ)
    assert chosen.required == {
        "platform": "vertex",
        "host": "0.0.0.0",
        "port": 7080,
        "vertex_health_route": "/v1/endpoints/1/deployedModels/2",
        "vertex_predict_route": "/v1/endpoints/1/deployedModels/2:predict",
    }
    assert chosen.defaults == {"max_body_bytes": VERTEX_MAX_BODY}
    assert chosen.model_dirs == []
    assert chosen.notes == [
        "AIP_STORAGE_URI gs://bucket/model ignored: the image holds its models",
        "AIP_DEPLOYED_MODEL_ID ignored",
    ]
    assert plan("vertex", {"AIP_STORAGE_URI": "/mnt/model"}).model_dirs == [Path("/mnt/model")]


def test_azure_and_generic() -> None:
    azure = plan("azure", {"AZUREML_MODEL_DIR": "/models", "WORKER_COUNT": "2", "SCORING_TIMEOUT_MS": "1500"})
    assert azure.required == {"platform": "azure", "host": "0.0.0.0"}
    assert azure.defaults == {"port": 5001, "workers": 2, "timeout_s": 1.5}
    assert azure.model_dirs == [Path("/models")]
    generic = plan("generic", {"PORT": "9090"})
    assert generic.required == {"platform": "generic"}
    assert generic.defaults == {"host": "0.0.0.0", "port": 9090}


@pytest.mark.parametrize(
    ("platform", "environ", "fragment"),
    [
        ("sagemaker", {"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND_TO_PORT must be a port"),
        ("sagemaker", {"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}, "SAGEMAKER_MODEL_SERVER_WORKERS must be"),
        ("sagemaker", {"SAGEMAKER_CONTAINER_LOG_LEVEL": "loud"}, "logging level"),
        ("vertex", {"AIP_HTTP_PORT": "70000"}, "AIP_HTTP_PORT must be a port"),
        ("vertex", {"AIP_PREDICT_ROUTE": "predict"}, "starting with '/'"),
    ],
)
def test_bad_values_are_named(platform: str, environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        plan(platform, environ)  # type: ignore[arg-type]
