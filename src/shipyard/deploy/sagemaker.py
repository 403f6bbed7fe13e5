"""`shipyard deploy sagemaker`: the model data to S3, then SageMaker's model, endpoint
configuration and endpoint, as the console or the SageMaker SDK would create them.

Every request is checked offline against botocore's own model of the SageMaker API (the same
schemas boto3 validates with) before the first call, so a wrong instance type or name fails
before anything exists on the account.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.deploy.cloud import Call, Plan, left, wait_for
from shipyard.errors import (
    CloudError,
    ConflictError,
    InvalidInputError,
    MissingDependencyError,
    UnauthorizedError,
)

_ROLE = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
_ECR = re.compile(
    r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})?$"
)
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE "
    "naming a profile in ~/.aws/credentials)"
)
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
}
# How to undo a deploy that failed half-way.
_CLEAN_UP = "delete them to start over, or keep them"


@dataclass(frozen=True, slots=True)
class Target:
    image: str
    role: str
    region: str
    name: str
    instance_type: str
    instances: int
    bucket: str | None  # None: SageMaker's default bucket, sagemaker-REGION-ACCOUNT
    digest: str  # of the model data, so a new upload never overwrites what an endpoint uses


def _botocore() -> Any:
    try:
        import botocore.session
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("boto3", "sagemaker", "deploying to SageMaker") from exc
    return botocore.session.get_session()


def region(flag: str | None) -> str:
    """--region, else the AWS configuration's (AWS_REGION, AWS_DEFAULT_REGION, the profile)."""
    found = flag or _botocore().get_config_variable("region")
    if not found:
        raise InvalidInputError(
            "no AWS region: pass --region or set AWS_DEFAULT_REGION (or a region in ~/.aws/config)",
            field="region",
        )
    return str(found)


def plan(target: Target, archive: Path) -> Plan:
    """The calls that deploy `target`, validated against botocore's SageMaker and S3 schemas."""
    match = _ROLE.match(target.role)
    if match is None:
        raise InvalidInputError(
            f"--role {target.role!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME): "
            "SageMaker runs the endpoint as that role",
            field="role",
        )
    if _ECR.match(target.image) is None:
        raise InvalidInputError(
            f"--image {target.image!r} is not in Amazon ECR (ACCOUNT.dkr.ecr.REGION.amazonaws.com/"
            "REPO:TAG): SageMaker pulls only from ECR; push it there with `shipyard build --build "
            "--push ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO`",
            field="image",
        )
    if _NAME.match(target.name) is None:
        raise InvalidInputError(
            f"--name {target.name!r}: SageMaker names are 1-63 letters, digits and hyphens, "
            "starting with a letter or digit",
            field="name",
        )
    session = _botocore()
    sagemaker = session.get_service_model("sagemaker")
    types = sagemaker.shape_for("ProductionVariantInstanceType").enum
    if target.instance_type not in types:
        close = [t for t in types if t.split(".")[1:2] == target.instance_type.split(".")[1:2]][:6]
        hint = f" (e.g. {', '.join(close)})" if close else " (e.g. ml.m5.large, ml.c5.xlarge)"
        raise InvalidInputError(
            f"--instance-type {target.instance_type!r} is not a SageMaker real-time instance type{hint}",
            field="instance_type",
        )
    bucket = target.bucket or f"sagemaker-{target.region}-{match.group(1)}"
    key = f"shipyard/{target.name}/{target.digest.partition(':')[2][:16]}/model.tar.gz"
    model_data = f"s3://{bucket}/{key}"
    calls = [
        Call("s3", "PutObject", {"Bucket": bucket, "Key": key, "Body": "model.tar.gz"}),
        Call(
            "sagemaker",
            "CreateModel",
            {
                "ModelName": target.name,
                "ExecutionRoleArn": target.role,
                "PrimaryContainer": {
                    "Image": target.image,
                    "ModelDataUrl": model_data,
                    "Environment": {"SHIPYARD_PLATFORM": "sagemaker"},
                },
                "Tags": [{"Key": "shipyard:digest", "Value": target.digest}],
            },
        ),
        Call(
            "sagemaker",
            "CreateEndpointConfig",
            {
                "EndpointConfigName": target.name,
                "ProductionVariants": [
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": target.name,
                        "InstanceType": target.instance_type,
                        "InitialInstanceCount": target.instances,
                    }
                ],
            },
        ),
        Call("sagemaker", "CreateEndpoint", {"EndpointName": target.name, "EndpointConfigName": target.name}),
    ]
    _validate(session, calls)
    return Plan("sagemaker", target.name, target.region, calls, files={"model.tar.gz": archive})


def _validate(session: Any, calls: list[Call]) -> None:
    from botocore.validate import ParamValidator

    validator = ParamValidator()
    for call in calls:
        model = session.get_service_model(call.service).operation_model(call.operation)
        request = dict(call.request)
        if call.operation == "PutObject":
            request["Body"] = b""  # the file is sent, not its name
        report = validator.validate(request, model.input_shape)
        if report.has_errors():
            detail = " ".join(report.generate_report().split())
            raise InvalidInputError(f"{call.operation} would be refused: {detail}")


def _translate(exc: Exception, done: list[str]) -> Exception:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return UnauthorizedError(_NO_CREDENTIALS)
    if isinstance(exc, EndpointConnectionError):
        return CloudError(
            f"cannot reach AWS at {exc.kwargs.get('endpoint_url', '?')}; {left(done, _CLEAN_UP)}"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        # an endpoint that answers in another error format leaves the code in the message
        code = next((c for c in _BAD_CREDENTIALS if c == code or c in str(exc)), code)
        if code in _BAD_CREDENTIALS:
            return UnauthorizedError(
                f"AWS refused the credentials ({code}): check AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or AWS_PROFILE)"
            )
        operation = exc.operation_name
        return CloudError(f"{operation} failed: {code}: {error.get('Message', '')}; {left(done, _CLEAN_UP)}")
    return exc


def execute(
    plan: Plan,
    *,
    timeout_s: float,
    interval_s: float = 15.0,
    echo: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Run the plan with boto3 (credentials from AWS's standard sources; AWS_ENDPOINT_URL is
    honoured, which is how the tests reach a local endpoint), then wait until it serves."""
    try:
        import boto3
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("boto3", "sagemaker", "deploying to SageMaker") from exc
    session = boto3.Session(region_name=plan.region)
    s3 = session.client("s3")
    sagemaker = session.client("sagemaker")
    done: list[str] = []
    name = plan.endpoint
    try:
        _refuse_existing(sagemaker, name)
        upload, *creates = plan.calls
        _ensure_bucket(s3, upload.request["Bucket"], plan.region)
        archive = plan.files["model.tar.gz"]
        echo(f"uploading model data to s3://{upload.request['Bucket']}/{upload.request['Key']}")
        s3.upload_file(
            str(archive),
            upload.request["Bucket"],
            upload.request["Key"],
            Callback=Uploaded(archive.stat().st_size, echo),
        )
        done.append(f"s3://{upload.request['Bucket']}/{upload.request['Key']}")
        deletions = {
            "CreateModel": f"aws sagemaker delete-model --model-name {name}",
            "CreateEndpointConfig": f"aws sagemaker delete-endpoint-config --endpoint-config-name {name}",
            "CreateEndpoint": f"aws sagemaker delete-endpoint --endpoint-name {name}",
        }
        for call in creates:
            echo(f"{call.operation} {name}")
            getattr(sagemaker, _snake(call.operation))(**call.request)
            done.append(f"`{deletions[call.operation]}`")

        def state() -> tuple[str, str | None]:
            described = sagemaker.describe_endpoint(EndpointName=name)
            return str(described["EndpointStatus"]), described.get("FailureReason")

        wait_for(
            state,
            ready="InService",
            failed={"Failed", "OutOfService"},
            timeout_s=timeout_s,
            interval_s=interval_s,
            what=f"endpoint {name}",
            left=f"it was left as it is: watch it with `aws sagemaker describe-endpoint --endpoint-name "
            f"{name}`, or delete what this deploy created: {'; '.join(done[1:]) or 'nothing'}",
            echo=echo,
        )
    except Exception as exc:
        translated = _translate(exc, done)
        if translated is exc:
            raise
        raise translated from exc
    return {
        "platform": "sagemaker",
        "endpoint": name,
        "region": plan.region,
        "model_data": f"s3://{upload.request['Bucket']}/{upload.request['Key']}",
        "invoke": (
            f"aws sagemaker-runtime invoke-endpoint --region {plan.region} --endpoint-name {name} "
            "--content-type application/json --cli-binary-format raw-in-base64-out "
            "--body '{\"instances\": [...]}' /dev/stdout"
        ),
    }


class Uploaded:
    """boto3's upload callback (called from its transfer threads with each part's bytes): one
    line at every tenth of the file, so a large upload is not silent."""

    def __init__(self, size: int, echo: Callable[[str], None]) -> None:
        self._size, self._echo = max(size, 1), echo
        self._total = f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size / 1e3:,.1f} kB"
        self._sent = 0
        self._said = 0  # tenths reported
        self._lock = threading.Lock()

    def __call__(self, sent: int) -> None:
        with self._lock:
            self._sent += sent
            tenths = min(10, self._sent * 10 // self._size)
            if tenths > self._said:
                self._said = tenths
                self._echo(f"  {tenths * 10}% of {self._total}")


def _refuse_existing(sagemaker: Any, name: str) -> None:
    """A name in use is refused before anything is uploaded: SageMaker would refuse it half-way."""
    from botocore.exceptions import ClientError

    found = []
    for kind, describe, key, delete in (
        ("endpoint", sagemaker.describe_endpoint, "EndpointName", "delete-endpoint --endpoint-name"),
        (
            "endpoint configuration",
            sagemaker.describe_endpoint_config,
            "EndpointConfigName",
            "delete-endpoint-config --endpoint-config-name",
        ),
        ("model", sagemaker.describe_model, "ModelName", "delete-model --model-name"),
    ):
        try:
            describe(**{key: name})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ValidationException":
                raise
            continue  # SageMaker answers ValidationException for a name that does not exist
        found.append((kind, f"aws sagemaker {delete} {name}"))
    if found:
        raise ConflictError(
            f"{', '.join(kind for kind, _ in found)} {name} already exist(s) on SageMaker; deploy "
            f"with another --name, or delete: {'; '.join(f'`{cmd}`' for _, cmd in found)}",
            field="name",
        )


def _ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    """SageMaker's default bucket is made on first use, as the SageMaker SDK does; a bucket the
    user named must exist."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 403:
            raise UnauthorizedError(
                f"no permission on bucket {bucket}: the credentials need s3:PutObject on it"
            ) from exc
        if status != 404:
            raise
    if not bucket.startswith("sagemaker-"):
        raise InvalidInputError(
            f"bucket {bucket} does not exist: create it, or leave out --bucket", field="bucket"
        )
    config = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **config)


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()
