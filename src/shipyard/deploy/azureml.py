"""`shipyard deploy azure`: an Azure ML managed online endpoint and a deployment running Shipyard's
image, with the model folder (an embedded registry) registered as the deployment's model.

The plan is the two YAML documents `az ml online-endpoint create -f` and `az ml online-deployment
create -f` take; they are loaded with the `azure-ai-ml` SDK's own loaders, which validate them
against its schemas, so what --dry-run writes is exactly what the deploy sends.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.deploy.cloud import Plan, left
from shipyard.errors import (
    CloudError,
    DeadlineExceededError,
    InvalidInputError,
    MissingDependencyError,
    UnauthorizedError,
)

PORT = 5001  # Azure ML's inference server port, which its probes and scoring use
DEPLOYMENT = "blue"
_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
_SKU = re.compile(r"^Standard_[A-Z][A-Za-z0-9]*(_[A-Za-z0-9]+)*$")
_NO_CREDENTIALS = (
    "no Azure credentials found: set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET "
    "(a service principal), or run `az login`"
)
# How to undo a deploy that failed half-way.
_CLEAN_UP = "delete it to start over"


@dataclass(frozen=True, slots=True)
class Target:
    image: str
    name: str
    instance_type: str
    instances: int
    digest: str


def _sdk() -> Any:
    try:
        with warnings.catch_warnings():  # the SDK's own deprecations are not the user's concern
            warnings.simplefilter("ignore")
            import azure.ai.ml
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("azure-ai-ml", "azure", "deploying to Azure ML") from exc
    return azure.ai.ml


def plan(target: Target, model_folder: Path) -> Plan:
    """endpoint.yml and deployment.yml (with the model folder beside them), validated by the SDK."""
    if _NAME.match(target.name) is None:
        raise InvalidInputError(
            f"--name {target.name!r}: Azure ML endpoint names are 3-32 letters, digits and hyphens, "
            "starting with a letter",
            field="name",
        )
    if _SKU.match(target.instance_type) is None:
        raise InvalidInputError(
            f"--instance-type {target.instance_type!r} is not an Azure VM size (e.g. Standard_DS3_v2, "
            "Standard_F4s_v2, Standard_E4s_v3)",
            field="instance_type",
        )
    endpoint = (
        "$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json\n"
        f"name: {target.name}\n"
        "auth_mode: key\n"
        f"description: Shipyard ({target.digest})\n"
    )
    route = "    {name}:\n      port: {port}\n      path: {path}\n"
    deployment = (
        "$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json\n"
        f"name: {DEPLOYMENT}\n"
        f"endpoint_name: {target.name}\n"
        "model:\n"
        f"  name: {target.name}\n"
        "  path: ./model\n"
        "environment:\n"
        f"  name: {target.name}\n"
        f"  image: {target.image}\n"
        "  inference_config:\n"
        + route.format(name="liveness_route", port=PORT, path="/")
        + route.format(name="readiness_route", port=PORT, path="/")
        + route.format(name="scoring_route", port=PORT, path="/score")
        + "environment_variables:\n"
        "  SHIPYARD_PLATFORM: azure\n"
        f"instance_type: {target.instance_type}\n"
        f"instance_count: {target.instances}\n"
    )
    plan = Plan(
        "azure",
        target.name,
        "",
        [],
        files={"model": model_folder},
        documents={"endpoint.yml": endpoint, "deployment.yml": deployment},
    )
    load(plan, model_folder.parent)  # validated now, not at the first call
    return plan


def load(plan: Plan, folder: Path) -> tuple[Any, Any]:
    """The plan's documents as the SDK's entities, read from `folder` (where ./model lies)."""
    ml = _sdk()
    from azure.ai.ml.exceptions import ValidationException
    from marshmallow import ValidationError

    entities = []
    for name, loader in (
        ("endpoint.yml", ml.load_online_endpoint),
        ("deployment.yml", ml.load_online_deployment),
    ):
        path = folder / name
        path.write_text(plan.documents[name])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entities.append(loader(source=path))
        except (ValidationException, ValidationError, ValueError) as exc:
            detail = " ".join(str(exc).split())[:400]
            raise InvalidInputError(f"{name} does not match Azure ML's schema: {detail}") from exc
    return entities[0], entities[1]


def execute(
    plan: Plan,
    folder: Path,
    *,
    subscription: str | None,
    resource_group: str | None,
    workspace: str | None,
    timeout_s: float,
    echo: Callable[[str], None] = lambda _line: None,
    credential: Any = None,
) -> dict[str, Any]:
    """Create the endpoint and deployment with MLClient, send it all traffic, print how to call it."""
    missing = [
        flag
        for flag, value in (
            ("--subscription (AZURE_SUBSCRIPTION_ID)", subscription),
            ("--resource-group (AZURE_RESOURCE_GROUP)", resource_group),
            ("--workspace (AZUREML_WORKSPACE_NAME)", workspace),
        )
        if not value
    ]
    if missing:
        raise InvalidInputError(
            f"the Azure ML workspace is not named: set {', '.join(missing)}", field="workspace"
        )
    ml = _sdk()
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    client = ml.MLClient(credential, subscription, resource_group, workspace)
    endpoint, deployment = load(plan, folder)
    done: list[str] = []
    try:
        echo(f"creating endpoint {plan.endpoint}")
        client.online_endpoints.begin_create_or_update(endpoint).result(timeout=timeout_s)
        done.append(f"`az ml online-endpoint delete --name {plan.endpoint}`")
        echo(f"creating deployment {DEPLOYMENT} (this takes minutes)")
        client.online_deployments.begin_create_or_update(deployment).result(timeout=timeout_s)
        endpoint.traffic = {DEPLOYMENT: 100}
        client.online_endpoints.begin_create_or_update(endpoint).result(timeout=timeout_s)
        scoring = client.online_endpoints.get(plan.endpoint).scoring_uri
    except ClientAuthenticationError as exc:
        raise UnauthorizedError(
            _NO_CREDENTIALS if not done else f"Azure refused the credentials: {exc}"
        ) from exc
    except HttpResponseError as exc:
        raise CloudError(f"Azure ML refused a call: {exc.message}; {left(done, _CLEAN_UP)}") from exc
    except TimeoutError as exc:
        raise DeadlineExceededError(
            f"Azure ML did not finish within {timeout_s:g} s; {left(done, _CLEAN_UP)}. "
            "The operation goes on: "
            "watch it with `az ml online-deployment show "
            f"--endpoint-name {plan.endpoint} --name {DEPLOYMENT}`"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ == "CredentialUnavailableError":
            raise UnauthorizedError(_NO_CREDENTIALS) from exc
        raise
    return {
        "platform": "azure",
        "endpoint": plan.endpoint,
        "scoring_uri": scoring,
        "invoke": f"az ml online-endpoint invoke --name {plan.endpoint} --request-file request.json",
    }
