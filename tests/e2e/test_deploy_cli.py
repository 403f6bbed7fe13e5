"""`shipyard deploy` as a user runs it: SageMaker end to end against a real AWS endpoint (moto's
server), Vertex AI and Azure ML plans checked by the clouds' own SDK types, and each bad input."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3_support import S3Endpoint, start_moto
from shipyard.cli.main import main
from shipyard.deploy import cloud
from shipyard.errors import DeadlineExceededError
from shipyard.registry import Registry
from shipyard.serve import embedded
from shipyard.settings import Settings

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com/shipyard-iris:1"
ROLE = "arn:aws:iam::123456789012:role/sagemaker"
SAGEMAKER = ("deploy", "sagemaker", "iris", "--image", ECR, "--role", ROLE, "--poll", "0.01")
VERTEX = (
    "deploy",
    "vertex",
    "iris",
    "--image",
    "us-docker.pkg.dev/proj/repo/shipyard-iris:1",
    "--project",
    "proj",
)
AZURE = ("deploy", "azure", "iris", "--image", "myacr.azurecr.io/shipyard-iris:1")


@pytest.fixture(scope="module")
def aws() -> Iterator[S3Endpoint]:
    endpoint = start_moto()  # a real AWS endpoint: S3, SageMaker and STS all answer
    yield endpoint
    endpoint.stop()


@pytest.fixture
def home(tmp_path: Path, onnx_path: Path) -> Path:
    home = tmp_path / "home"
    with Registry(home) as registry:
        registry.push("iris", onnx_path)
    return home


@pytest.fixture
def aws_env(aws: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    for name, value in aws.env().items():
        monkeypatch.setenv(name, value)
    return aws


def shipyard(home: Path, *args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--home", str(home), *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, expected_code: int, fragment: str) -> None:
    assert code == expected_code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], err


def serves_iris(folder: Path) -> None:
    """The folder a platform mounts holds a registry with iris, its digest intact."""
    found = embedded.find([folder])
    assert found is not None
    with Registry(settings=Settings.model_construct(home=found)) as registry:
        assert registry.resolve("iris").format == "onnx"
        registry.verify("iris")  # raises when a file does not match its digest


def test_sagemaker_uploads_the_model_data_and_creates_a_serving_endpoint(
    home: Path, aws_env: S3Endpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    code, out, err = shipyard(home, *SAGEMAKER, "--json", capsys=capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["endpoint"] == "shipyard-iris-1"
    sagemaker = boto3.client("sagemaker")
    assert sagemaker.describe_endpoint(EndpointName="shipyard-iris-1")["EndpointStatus"] == "InService"
    container = sagemaker.describe_model(ModelName="shipyard-iris-1")["PrimaryContainer"]
    assert container["Image"] == ECR
    assert container["ModelDataUrl"] == result["model_data"]
    variant = sagemaker.describe_endpoint_config(EndpointConfigName="shipyard-iris-1")["ProductionVariants"][
        0
    ]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 1)
    # the model data is what SageMaker unpacks into /opt/ml/model: a registry the entrypoint serves
    bucket, _, key = result["model_data"].removeprefix("s3://").partition("/")
    assert bucket == "sagemaker-us-east-1-123456789012"  # SageMaker's default bucket, made on first use
    archive = tmp_path / "model.tar.gz"
    boto3.client("s3").download_file(bucket, key, str(archive))
    unpacked = tmp_path / "opt-ml-model"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    serves_iris(unpacked)

    # the same name again is refused before anything is uploaded, naming what to delete
    code, _, err = shipyard(home, *SAGEMAKER, capsys=capsys)
    one_line_error(code, err, 4, "aws sagemaker delete-endpoint --endpoint-name shipyard-iris-1")


def test_sagemaker_dry_run_writes_the_exact_requests_and_the_model_data(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    out = tmp_path / "plan"
    code, stdout, err = shipyard(
        home, *SAGEMAKER, "--region", "eu-west-1", "--instance-type", "ml.c5.xlarge", "--instances", "2",
        "--dry-run", "--out", out, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}")
    plan = json.loads((out / cloud.PLAN_FILE).read_text())
    assert [c["operation"] for c in plan["calls"]] == [
        "PutObject", "CreateModel", "CreateEndpointConfig", "CreateEndpoint",
    ]  # fmt: skip
    variant = plan["calls"][2]["request"]["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.xlarge", 2)
    with tarfile.open(out / "model.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    serves_iris(tmp_path / "unpacked")
    # a plan folder written before is replaced only with --force
    code, _, err = shipyard(
        home, *SAGEMAKER, "--region", "eu-west-1", "--dry-run", "--out", out, capsys=capsys
    )
    one_line_error(code, err, 4, "pass --force to replace it")
    code, _, err = shipyard(
        home, *SAGEMAKER, "--region", "eu-west-1", "--dry-run", "--out", out, "--force", capsys=capsys
    )
    assert code == 0, err


def test_sagemaker_credentials_missing_or_refused_are_one_line_naming_the_variables(
    home: Path,
    aws: S3Endpoint,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.url)
    code, _, err = shipyard(home, *SAGEMAKER, capsys=capsys)
    one_line_error(code, err, 5, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")

    checking = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # moto checks keys now
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", checking.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        code, _, err = shipyard(home, *SAGEMAKER, capsys=capsys)
    finally:
        checking.stop()
    one_line_error(code, err, 5, "AWS refused the credentials")
    assert "wrong-secret" not in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--instance-type", "ml.m5.huge"), "is not a SageMaker real-time instance type (e.g. ml.m5.large"),
        (("--role", "sagemaker-role"), "is not an IAM role ARN"),
        (("--image", "docker.io/me/shipyard-iris:1"), "SageMaker pulls only from ECR"),
        (("--name", "iris_prod"), "SageMaker names are 1-63 letters, digits and hyphens"),
    ],
)
def test_sagemaker_bad_input_is_refused_before_any_call(
    home: Path, aws_env: S3Endpoint, args: tuple[str, ...], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    def account() -> tuple[int, int]:
        models = boto3.client("sagemaker").list_models()["Models"]
        return len(models), len(boto3.client("s3").list_buckets()["Buckets"])

    before = account()
    code, _, err = shipyard(home, *SAGEMAKER, *args, capsys=capsys)
    one_line_error(code, err, 2, fragment)
    assert account() == before  # nothing reached the account


def test_vertex_plan_is_the_sdk_request_types(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipyard.deploy import vertex

    out = tmp_path / "plan"
    code, _, err = shipyard(
        home, *VERTEX, "--instance-type", "n1-standard-4", "--instances", "1", "--max-instances", "3",
        "--dry-run", "--out", out, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    plan = json.loads((out / cloud.PLAN_FILE).read_text())
    upload, create, deploy = (vertex.request(c["operation"], c["request"]) for c in plan["calls"])
    spec = upload.model.container_spec
    assert spec.image_uri.endswith("shipyard-iris:1")
    assert [p.container_port for p in spec.ports] == [8080]
    assert (spec.predict_route, spec.health_route) == ("/predict", "/health")
    assert upload.parent == create.parent == "projects/proj/locations/us-central1"
    resources = deploy.deployed_model.dedicated_resources
    replicas = (resources.min_replica_count, resources.max_replica_count)
    assert (resources.machine_spec.machine_type, *replicas) == ("n1-standard-4", 1, 3)
    assert dict(deploy.traffic_split) == {"0": 100}
    # a field the API does not have is refused by the SDK's own types
    plan["calls"][0]["request"]["model"]["containerSpec"]["imageUrl"] = "typo"
    with pytest.raises(Exception, match="imageUrl"):
        vertex.request("UploadModel", plan["calls"][0]["request"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the Azure SDK's own
def test_azure_plan_loads_with_the_sdk_and_carries_the_model_folder(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from azure.ai.ml import load_online_deployment, load_online_endpoint
    from azure.ai.ml.entities import Environment

    out = tmp_path / "plan"
    code, _, err = shipyard(
        home, *AZURE, "--instance-type", "Standard_F4s_v2", "--dry-run", "--out", out, capsys=capsys
    )
    assert code == 0, err
    endpoint = load_online_endpoint(source=out / "endpoint.yml")
    deployment = load_online_deployment(source=out / "deployment.yml")
    assert endpoint.name == deployment.endpoint_name == "shipyard-iris-1"
    assert endpoint.auth_mode == "key"
    assert (deployment.instance_type, deployment.instance_count) == ("Standard_F4s_v2", 1)
    assert isinstance(deployment.environment, Environment)
    routes = deployment.environment.inference_config
    assert routes is not None
    assert (routes.scoring_route.port, routes.scoring_route.path) == (5001, "/score")
    assert (routes.liveness_route.path, routes.readiness_route.path) == ("/", "/")
    serves_iris(out / "model")  # what Azure mounts at AZUREML_MODEL_DIR


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        ((*VERTEX, "--instance-type", "n1-standard-1"), 2, "not a machine type Vertex AI predicts on"),
        ((*VERTEX, "--instance-type", "t2.micro"), 2, "not a machine type Vertex AI predicts on"),
        ((*VERTEX[:-2], "--image", "docker.io/me/iris:1", "--project", "p"), 2, "Vertex AI pulls only from"),
        ((*VERTEX, "--region", "mars"), 2, "is not a Google Cloud region"),
        ((*VERTEX, "--instances", "3", "--max-instances", "2"), 2, "more than --max-instances"),
        ((*AZURE, "--instance-type", "ml.m5.large"), 2, "is not an Azure VM size"),
        ((*AZURE, "--name", "9lives"), 2, "Azure ML endpoint names are 3-32"),
        (("deploy", "vertex", "nope", "--image", "gcr.io/p/i:1", "--project", "p"), 3, "nope"),
        (("deploy", "azure", "iris:7", "--image", "x.azurecr.io/i:1"), 3, "has no version 7"),
    ],
)
def test_bad_input_is_one_line_with_its_exit_code(
    home: Path, args: tuple[str, ...], code: int, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got, _, err = shipyard(home, *args, "--dry-run", capsys=capsys)
    one_line_error(got, err, code, fragment)


def test_missing_credentials_and_workspace_name_what_to_set(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud login here
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # not on Google Cloud: skip the metadata server
    code, _, err = shipyard(home, *VERTEX, capsys=capsys)
    one_line_error(code, err, 5, "set GOOGLE_APPLICATION_CREDENTIALS")
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = shipyard(home, *AZURE, capsys=capsys)
    one_line_error(code, err, 2, "--subscription (AZURE_SUBSCRIPTION_ID)")
    code, _, err = shipyard(home, *AZURE, "--out", tmp_path / "x", capsys=capsys)
    one_line_error(code, err, 2, "--out is for --dry-run")


def test_an_endpoint_that_never_serves_times_out_saying_what_is_left() -> None:
    states = iter(["Creating"] * 1000)
    with pytest.raises(DeadlineExceededError, match=r"still Creating after 0\.05 s; delete: x"):
        cloud.wait_for(
            lambda: (next(states), None), ready="InService", failed={"Failed"}, timeout_s=0.05,
            interval_s=0.01, what="endpoint e", left="delete: x",
        )  # fmt: skip
