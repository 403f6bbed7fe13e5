"""`shipyard deploy vertex`: upload the model to Vertex AI's Model Registry with Shipyard's image as
its custom container, create an endpoint and deploy the model to it.

The requests are built as the `google-cloud-aiplatform` SDK's own message types (the API's
protobuf schema), so an unknown field or a wrong type fails here, offline. The image carries its
models (`shipyard build --platform vertex`), so no artifact upload to Cloud Storage is needed:
AIP_STORAGE_URI is ignored by the entrypoint, as the README says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shipyard.deploy.cloud import Call, Plan, left
from shipyard.errors import (
    CloudError,
    DeadlineExceededError,
    InvalidInputError,
    MissingDependencyError,
    UnauthorizedError,
)

_IMAGE = re.compile(
    r"^([a-z0-9-]+-docker\.pkg\.dev|([a-z]+\.)?gcr\.io)/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})?$"
)
_MACHINE = re.compile(
    r"^((e2|n1|n2|n2d|c2|c2d|c3|c3d|m1)-(standard|highmem|highcpu|ultramem)-(\d+)"
    r"|(a2|a3)-(highgpu|ultragpu|megagpu)-(\d+)g|g2-standard-(\d+))$"
)
_REGION = re.compile(r"^[a-z]+-[a-z]+\d$")
PORT = 8080
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/health"
_NO_CREDENTIALS = (
    "no Google Cloud credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
    "key file, or run `gcloud auth application-default login`"
)
_CLEAN_UP = (
    "delete them in the console or with gcloud to start over"  # how to undo a deploy that failed half-way
)


@dataclass(frozen=True, slots=True)
class Target:
    image: str
    project: str
    region: str
    name: str
    machine_type: str
    min_replicas: int
    max_replicas: int
    digest: str


def _types() -> Any:
    try:
        from google.cloud import aiplatform_v1
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("google-cloud-aiplatform", "vertex", "deploying to Vertex AI") from exc
    return aiplatform_v1


def plan(target: Target) -> Plan:
    """UploadModel, CreateEndpoint and DeployModel, each built as the SDK's request message."""
    if not target.project:
        raise InvalidInputError(
            "no Google Cloud project: pass --project or set GOOGLE_CLOUD_PROJECT", field="project"
        )
    if _REGION.match(target.region) is None:
        raise InvalidInputError(
            f"--region {target.region!r} is not a Google Cloud region (e.g. us-central1)", field="region"
        )
    if _IMAGE.match(target.image) is None:
        raise InvalidInputError(
            f"--image {target.image!r} is not in Artifact Registry (REGION-docker.pkg.dev/PROJECT/REPO/"
            "IMAGE:TAG) or Container Registry (gcr.io/PROJECT/IMAGE:TAG): Vertex AI pulls only from "
            "those; push it there with `shipyard build --build --push …`",
            field="image",
        )
    machine = _MACHINE.match(target.machine_type)
    cores = int(next((g for g in (machine.groups()[3:] if machine else ()) if g), "0"))
    if machine is None or cores < 2:
        raise InvalidInputError(
            f"--instance-type {target.machine_type!r} is not a machine type Vertex AI predicts on "
            "(e.g. n1-standard-2, e2-standard-4, n2-highmem-8, g2-standard-4)",
            field="instance_type",
        )
    if target.min_replicas > target.max_replicas:
        raise InvalidInputError(
            f"--instances {target.min_replicas} is more than --max-instances {target.max_replicas}",
            field="instances",
        )
    v1 = _types()
    parent = f"projects/{target.project}/locations/{target.region}"
    upload = v1.UploadModelRequest(
        parent=parent,
        model=v1.Model(
            display_name=target.name,
            description=f"served by Shipyard ({target.digest})",
            labels={"shipyard": "true"},
            container_spec=v1.ModelContainerSpec(
                image_uri=target.image,
                ports=[v1.Port(container_port=PORT)],
                predict_route=PREDICT_ROUTE,
                health_route=HEALTH_ROUTE,
                env=[v1.EnvVar(name="SHIPYARD_PLATFORM", value="vertex")],
            ),
        ),
    )
    endpoint = v1.CreateEndpointRequest(parent=parent, endpoint=v1.Endpoint(display_name=target.name))
    deploy = v1.DeployModelRequest(
        endpoint=f"{parent}/endpoints/{{endpoint}}",  # filled from CreateEndpoint's answer
        deployed_model=v1.DeployedModel(
            model=f"{parent}/models/{{model}}",  # filled from UploadModel's answer
            display_name=target.name,
            dedicated_resources=v1.DedicatedResources(
                machine_spec=v1.MachineSpec(machine_type=target.machine_type),
                min_replica_count=target.min_replicas,
                max_replica_count=target.max_replicas,
            ),
        ),
        traffic_split={"0": 100},
    )
    calls = [
        Call("aiplatform.ModelService", "UploadModel", _as_json(upload)),
        Call("aiplatform.EndpointService", "CreateEndpoint", _as_json(endpoint)),
        Call("aiplatform.EndpointService", "DeployModel", _as_json(deploy)),
    ]
    return Plan("vertex", target.name, target.region, calls)


def _as_json(message: Any) -> dict[str, Any]:
    """The request as the API's JSON (camelCase field names, as the REST API and gcloud show it)."""
    data: dict[str, Any] = json.loads(
        type(message).to_json(
            message, always_print_fields_with_no_presence=False, use_integers_for_enums=False
        )
    )
    return data


def request(operation: str, data: dict[str, Any]) -> Any:
    """A plan's JSON back as the SDK's request message: proto-plus refuses unknown fields."""
    v1 = _types()
    kind = {
        "UploadModel": v1.UploadModelRequest,
        "CreateEndpoint": v1.CreateEndpointRequest,
        "DeployModel": v1.DeployModelRequest,
    }[operation]
    try:
        return kind.from_json(json.dumps(data))
    except Exception as exc:  # the SDK raises ParseError (a protobuf internal type)
        raise InvalidInputError(f"{operation} request does not match the Vertex AI API: {exc}") from exc


def execute(
    plan: Plan,
    *,
    timeout_s: float,
    echo: Callable[[str], None] = lambda _line: None,
    credentials: Any = None,
) -> dict[str, Any]:
    """Run the plan with the SDK's clients (credentials from Application Default Credentials)."""
    v1 = _types()
    import google.auth
    from google.api_core import exceptions as api

    if credentials is None:
        try:
            credentials, _ = google.auth.default()
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise UnauthorizedError(_NO_CREDENTIALS) from exc
    options = {"api_endpoint": f"{plan.region}-aiplatform.googleapis.com"}
    models = v1.ModelServiceClient(credentials=credentials, client_options=options)
    endpoints = v1.EndpointServiceClient(credentials=credentials, client_options=options)
    upload, create, deploy = (request(c.operation, c.request) for c in plan.calls)
    done: list[str] = []
    try:
        echo(f"uploading model {plan.endpoint}")
        model = models.upload_model(request=upload).result(timeout=timeout_s).model
        done.append(f"model {model}")
        echo(f"creating endpoint {plan.endpoint}")
        endpoint = endpoints.create_endpoint(request=create).result(timeout=timeout_s).name
        done.append(f"endpoint {endpoint}")
        deploy.endpoint = endpoint
        deploy.deployed_model.model = model
        echo(f"deploying {model} to {endpoint} (this takes minutes)")
        endpoints.deploy_model(request=deploy).result(timeout=timeout_s)
    except api.Unauthenticated as exc:
        raise UnauthorizedError(f"Google Cloud refused the credentials: {exc.message}") from exc
    except api.PermissionDenied as exc:
        raise UnauthorizedError(f"permission denied: {exc.message}; {left(done, _CLEAN_UP)}") from exc
    except api.GoogleAPICallError as exc:
        raise CloudError(f"Vertex AI refused a call: {exc.message}; {left(done, _CLEAN_UP)}") from exc
    except TimeoutError as exc:  # concurrent.futures.TimeoutError is TimeoutError since 3.11
        raise DeadlineExceededError(
            f"Vertex AI did not finish within {timeout_s:g} s; {left(done, _CLEAN_UP)}. "
            "The operation goes on: "
            "see it in the console, or run the deploy again once it is done"
        ) from exc
    return {
        "platform": "vertex",
        "endpoint": endpoint,
        "model": model,
        "region": plan.region,
        "invoke": f"gcloud ai endpoints predict {endpoint.rsplit('/', 1)[-1]} --region {plan.region} "
        "--json-request request.json",
    }
