"""A team registry: artifacts on S3 (moto's real S3 server on loopback), metadata on PostgreSQL.

Push, pull and serve from the bucket; an upload killed half-way; two pushers at once; an object
tampered in the bucket; the cache a restarted server starts from; credentials and endpoints that
are missing or wrong.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from s3_support import S3Endpoint, start_moto
from servers import SHIPYARD, free_port, running, server_env
from shipyard.errors import IntegrityError
from shipyard.registry import Registry
from shipyard.settings import Settings

pytestmark = pytest.mark.slow
# Fail fast where the store cannot be reached: one attempt, not botocore's retries with backoff.
ONE_TRY = '{"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}'


@pytest.fixture(scope="module")
def iris() -> tuple[Any, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y), x


@pytest.fixture
def aws(s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """This process reaches the endpoint through the standard AWS variables, as a user's would."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


def team_settings(tmp_path: Path, bucket: str, registry_url: str | None, cache: str = "cache") -> Settings:
    return Settings.load(
        home=tmp_path / "home",
        registry_url=registry_url,
        artifact_url=f"s3://{bucket}/team",
        cache_dir=str(tmp_path / cache),
    )


def team_env(settings: Settings, s3: S3Endpoint, **extra: str) -> dict[str, str]:
    """A child process's environment for the same registry, with its own cache folder."""
    env = {**s3.env(), "SHIPYARD_ARTIFACT_URL": str(settings.artifact_url)}
    env["SHIPYARD_CACHE_DIR"] = str(settings.artifact_cache_dir)
    if settings.registry_url:
        env["SHIPYARD_REGISTRY_URL"] = settings.registry_url
    return {**env, **extra}


def keys_under(s3: S3Endpoint, bucket: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def infer(client: Any, x: np.ndarray) -> list[int]:
    body = {
        "inputs": [{"name": "input", "datatype": "FP64", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    response = client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 200, response.text
    return next(o["data"] for o in response.json()["outputs"] if o["name"] == "label")


def write_large_onnx(path: Path, megabytes: int) -> Path:
    """A valid ONNX model y = x @ W with a W of about `megabytes` MB (random: nothing compresses)."""
    cols = megabytes * (1 << 20) // (4 * 256)
    weights = np.random.default_rng(7).standard_normal((256, cols)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, cols])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, str(path))
    return path


@pytest.mark.postgres
def test_push_pull_and_serve_from_s3_then_restart_from_the_cache(
    aws: S3Endpoint, postgres_url: str, tmp_path: Path, iris: tuple[Any, np.ndarray]
) -> None:
    model, x = iris
    bucket = aws.bucket()
    pusher = team_settings(tmp_path, bucket, postgres_url, cache="pusher-cache")
    with Registry(settings=pusher) as registry:
        version = registry.push("iris", model, sample_input=x[:2], alias="production")
    hexdigest = version.digest.removeprefix("sha256:")
    assert keys_under(aws, bucket) == [
        f"team/sha256/{hexdigest[:2]}/{hexdigest}.json",
        f"team/sha256/{hexdigest[:2]}/{hexdigest}/model.skops",
    ]

    server_settings = team_settings(tmp_path, bucket, postgres_url, cache="server-cache")
    env = team_env(server_settings, aws)
    before = aws.counts().get("GetObject", 0)
    with (
        running(tmp_path / "home", ["iris@production"], tmp_path / "first", env=env) as server,
        server.client() as client,
    ):
        assert infer(client, x[:5]) == model.predict(x[:5]).tolist()
    fetched = aws.counts().get("GetObject", 0) - before
    assert fetched >= 1  # a cold cache pulled the artifact from the bucket

    # A restarted server finds the artifact in its cache, verifies it, and downloads nothing.
    before = aws.counts().get("GetObject", 0)
    with (
        running(tmp_path / "home", ["iris@production"], tmp_path / "second", env=env) as server,
        server.client() as client,
    ):
        assert infer(client, x[:5]) == model.predict(x[:5]).tolist()
    assert aws.counts().get("GetObject", 0) == before


def test_a_large_file_goes_up_in_parts_and_comes_back_whole(aws: S3Endpoint, tmp_path: Path) -> None:
    bucket = aws.bucket()
    settings = team_settings(tmp_path, bucket, None).model_copy(update={"artifact_part_bytes": 5 << 20})
    path = write_large_onnx(tmp_path / "large.onnx", 24)
    before = aws.counts().get("UploadPart", 0)
    seen: list[tuple[int, int]] = []
    with Registry(settings=settings) as registry:
        version = registry.push("large", path, progress=lambda done, total: seen.append((done, total)))
        assert aws.counts().get("UploadPart", 0) - before >= 4  # 24 MB in 5 MB parts
        assert seen[-1] == (version.size, version.size)
        assert [done for done, _ in seen] == sorted(done for done, _ in seen)
        # The same bytes again: the already-stored check (asked while the upload is created)
        # stops it before any part, and that upload is aborted, not left for gc.
        sent, aborted = aws.counts().get("UploadPart", 0), aws.counts().get("AbortMultipartUpload", 0)
        again = registry.push("large-again", path)
        assert again.digest == version.digest
        assert aws.counts().get("UploadPart", 0) == sent
        assert aws.counts().get("AbortMultipartUpload", 0) == aborted + 1
        assert aws.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        registry.store.cache.evict()  # type: ignore[attr-defined]
    # The upload named the CRC32 botocore puts on each part (as boto3's transfer manager does), so
    # the store keeps the parts' checksums instead of checksumming the whole object again.
    large = next(key for key in keys_under(aws, bucket) if key.endswith("/model.onnx"))
    stored = aws.client().head_object(Bucket=bucket, Key=large, ChecksumMode="ENABLED")
    assert stored.get("ChecksumCRC32"), stored
    fresh = settings.model_copy(update={"cache_dir": tmp_path / "other-cache"})
    with Registry(settings=fresh) as registry:
        folder = registry.artifact_path("large:1")
        assert (folder / "model.onnx").read_bytes() == path.read_bytes()
        assert registry.store.cache.downloads == 1  # type: ignore[attr-defined]


def test_an_upload_killed_half_way_leaves_nothing_visible_and_gc_reclaims_it(
    aws: S3Endpoint, tmp_path: Path
) -> None:
    bucket = aws.bucket()
    settings = team_settings(tmp_path, bucket, None)
    env = server_env(tmp_path / "home", **team_env(settings, aws, SHIPYARD_ARTIFACT_PART_BYTES=str(5 << 20)))
    path = write_large_onnx(tmp_path / "large.onnx", 40)
    parts_before = aws.counts().get("UploadPart", 0)
    push = subprocess.Popen(
        [str(SHIPYARD), "push", "large", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        aws.wait_for("UploadPart", parts_before + 1)  # the upload is under way
    finally:
        push.send_signal(signal.SIGKILL)
        push.wait()
    client = aws.client()
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads, "the killed push left no multipart upload: it was not half-way"
    with Registry(settings=settings) as registry:
        assert registry.list_models() == []  # no version names the partial artifact
        removed, _ = registry.gc(grace_s=0)
        assert removed >= 1
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert keys_under(aws, bucket) == []


@pytest.mark.postgres
def test_two_processes_pushing_at_once_get_distinct_complete_versions(
    aws: S3Endpoint, postgres_url: str, tmp_path: Path
) -> None:
    bucket = aws.bucket()
    settings = team_settings(tmp_path, bucket, postgres_url)
    with Registry(settings=settings):
        pass  # migrate the schema before the children race
    pushes = []
    for i in range(2):
        path = tmp_path / f"model-{i}.onnx"
        write_large_onnx(path, 1 + i)
        env = server_env(
            tmp_path / "home", **team_env(settings, aws, SHIPYARD_CACHE_DIR=str(tmp_path / f"c{i}"))
        )
        pushes.append(
            subprocess.Popen(
                [str(SHIPYARD), "push", "m", str(path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    outputs = [p.communicate(timeout=120) for p in pushes]
    assert [p.returncode for p in pushes] == [0, 0], outputs
    for out, _ in outputs:
        pushed = rf"pushed m:[12] sha256:\w+ to registry .+, artifacts in s3://{bucket}/team\n"
        assert re.fullmatch(pushed, out.decode()), out
    with Registry(settings=settings.model_copy(update={"cache_dir": tmp_path / "reader"})) as registry:
        versions = registry.list_versions("m")
        assert sorted(v.version for v in versions) == [1, 2]
        assert len({v.digest for v in versions}) == 2
        assert [(str(v.ref), problems) for v, problems in registry.verify()] == [("m:1", []), ("m:2", [])]


def test_an_object_tampered_in_the_bucket_is_refused_naming_the_version_and_file(
    aws: S3Endpoint, tmp_path: Path, iris: tuple[Any, np.ndarray]
) -> None:
    model, x = iris
    bucket = aws.bucket()
    settings = team_settings(tmp_path, bucket, None)
    with Registry(settings=settings) as registry:
        version = registry.push("iris", model, sample_input=x[:2])
    hexdigest = version.digest.removeprefix("sha256:")
    aws.client().put_object(
        Bucket=bucket, Key=f"team/sha256/{hexdigest[:2]}/{hexdigest}/model.skops", Body=b"not the model"
    )
    reader = settings.model_copy(update={"cache_dir": tmp_path / "reader-cache"})
    with Registry(settings=reader) as registry:
        with pytest.raises(IntegrityError, match=r"artifact of iris:1 .*file 'model\.skops' does not match"):
            registry.load("iris:1")
        assert not list((tmp_path / "reader-cache" / "sha256").glob("*/*"))  # nothing bad was cached
        [(_, problems)] = registry.verify("iris:1")
        assert problems == ["file 'model.skops' does not match its digest (size 13 bytes)"]


def test_a_large_object_cut_short_in_the_bucket_is_refused(aws: S3Endpoint, tmp_path: Path) -> None:
    bucket = aws.bucket()
    settings = team_settings(tmp_path, bucket, None).model_copy(update={"artifact_part_bytes": 5 << 20})
    with Registry(settings=settings) as registry:
        version = registry.push("large", write_large_onnx(tmp_path / "large.onnx", 12))
    hexdigest = version.digest.removeprefix("sha256:")
    aws.client().put_object(
        Bucket=bucket, Key=f"team/sha256/{hexdigest[:2]}/{hexdigest}/model.onnx", Body=b"x"
    )
    reader = settings.model_copy(update={"cache_dir": tmp_path / "reader-cache"})
    with (
        Registry(settings=reader) as registry,
        pytest.raises(IntegrityError, match=r"artifact of large:1 .*'model\.onnx' does not match .*shorter"),
    ):
        registry.artifact_path("large:1")


def test_a_cached_copy_altered_on_disk_is_fetched_again(
    aws: S3Endpoint, tmp_path: Path, iris: tuple[Any, np.ndarray]
) -> None:
    model, x = iris
    settings = team_settings(tmp_path, aws.bucket(), None)
    with Registry(settings=settings) as registry:
        version = registry.push("iris", model, sample_input=x[:2])
        cached = registry.store.cache.entry(version.digest) / "model.skops"  # type: ignore[attr-defined]
        cached.write_bytes(b"rotten")
        registry.load("iris:1").close()
        assert registry.store.cache.downloads == 1  # type: ignore[attr-defined]
        assert cached.read_bytes() != b"rotten"


def _cli(args: list[str], env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHIPYARD), *args],
        env=server_env(home, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_missing_credentials_are_one_line_naming_the_variables(s3: S3Endpoint, tmp_path: Path) -> None:
    bucket = s3.bucket()
    settings = team_settings(tmp_path, bucket, None)
    env = {
        **team_env(settings, s3),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    child = {k: v for k, v in server_env(tmp_path / "home", **env).items() if k not in names}
    result = subprocess.run(
        [str(SHIPYARD), "serve", "iris", "--port", "0"],
        env=child,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 5, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in lines[0]
    assert f"s3://{bucket}/team" in lines[0]
    assert "Traceback" not in result.stderr


def test_an_unreachable_endpoint_or_missing_bucket_fails_at_start_in_one_line(
    s3: S3Endpoint, tmp_path: Path
) -> None:
    settings = team_settings(tmp_path, "no-such-bucket", None)
    result = _cli(["serve", "iris", "--port", "0"], team_env(settings, s3), tmp_path / "home")
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: the artifact store s3://no-such-bucket/team does not exist (checking it at start): "
        "create the bucket first"
    ]

    closed = free_port()
    env = {
        **team_env(settings, s3),
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
        "SHIPYARD_ARTIFACT_URL": "s3://user:hunter2@bucket/team",
        "SHIPYARD_ARTIFACT_OPTIONS": ONE_TRY,
    }
    result = _cli(["serve", "iris", "--port", "0"], env, tmp_path / "home")
    assert result.returncode == 6, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the artifact store s3://***@bucket/team" in lines[0], lines
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def locked_s3() -> Any:
    """An S3 endpoint that checks credentials (moto with IAM enforced), a bucket on it, and the
    keys of a user who may not touch that bucket."""
    endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"})  # bucket, user, key: then auth
    import boto3

    options = {"endpoint_url": endpoint.url, "region_name": "us-east-1"}
    keys = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    boto3.client("s3", **options, **keys).create_bucket(Bucket="locked")
    iam = boto3.client("iam", **options, **keys)
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    endpoint.stop()


def test_wrong_credentials_and_a_bucket_without_permission_are_one_line_each(
    locked_s3: Any, tmp_path: Path
) -> None:
    endpoint, user_key, user_secret = locked_s3
    base = {**endpoint.env(), "SHIPYARD_ARTIFACT_URL": "s3://locked/team"}
    wrong = _cli(
        ["serve", "iris", "--port", "0"], {**base, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}, tmp_path
    )
    assert wrong.returncode == 5, wrong.stderr
    assert wrong.stderr.strip().splitlines() == [
        "error: the artifact store s3://locked/team refused the credentials (InvalidAccessKeyId) while "
        "checking it at start: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    ]
    assert "wrong-secret" not in wrong.stderr and "testing-secret" not in wrong.stderr

    denied = _cli(
        ["serve", "iris", "--port", "0"],
        {**base, "AWS_ACCESS_KEY_ID": user_key, "AWS_SECRET_ACCESS_KEY": user_secret},
        tmp_path,
    )
    assert denied.returncode == 5, denied.stderr
    lines = denied.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: access denied to the artifact store s3://locked/team"
    ), lines
    assert user_secret not in denied.stderr


def test_a_running_server_keeps_serving_what_it_has_when_the_store_goes_away(
    tmp_path: Path, iris: tuple[Any, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = iris
    endpoint = start_moto()
    for key, value in endpoint.env().items():
        monkeypatch.setenv(key, value)
    try:
        bucket = endpoint.bucket()
        settings = team_settings(tmp_path, bucket, None)
        with Registry(settings=settings) as registry:
            registry.push("iris", model, sample_input=x[:2], alias="production")
            registry.push(
                "iris", LogisticRegression(max_iter=50).fit(x, model.predict(x) == 0), sample_input=x[:2]
            )
        env = team_env(
            settings,
            endpoint,
            SHIPYARD_CACHE_DIR=str(tmp_path / "server-cache"),
            SHIPYARD_SERVE__POLL_INTERVAL_S="0.2",
            SHIPYARD_ARTIFACT_OPTIONS=ONE_TRY,
        )
        with running(tmp_path / "home", ["iris@production"], tmp_path / "logs", env=env) as server:
            endpoint.stop()  # the bucket is gone from here on
            with Registry(settings=settings) as registry:
                registry.set_alias("iris", "production", 2)

            def reports_the_store(client: Any) -> bool:
                status = client.get("/readyz").json()["models"]["iris"]
                return "cannot reach the artifact store" in status.get("reason", "")

            server.wait_until(reports_the_store)
            with server.client() as client:
                status = client.get("/readyz").json()["models"]["iris"]
                assert status["version"] == 1 and status["state"] == "ready"
                assert "points at version 2, which cannot be served" in status["reason"]
                assert infer(client, x[:5]) == model.predict(x[:5]).tolist()  # version 1 still answers
    finally:
        endpoint.stop()


@pytest.mark.postgres
def test_an_alias_move_on_postgresql_reaches_a_running_server_well_under_the_poll_interval(
    postgres_url: str, tmp_path: Path, iris: tuple[Any, np.ndarray]
) -> None:
    import time

    model, x = iris
    settings = Settings.load(home=tmp_path / "home", registry_url=postgres_url)
    with Registry(settings=settings) as registry:
        registry.push("iris", model, sample_input=x[:2], alias="production")
        registry.push(
            "iris", LogisticRegression(max_iter=50).fit(x, model.predict(x) == 0), sample_input=x[:2]
        )
    env = {"SHIPYARD_REGISTRY_URL": postgres_url, "SHIPYARD_SERVE__POLL_INTERVAL_S": "30"}
    with running(tmp_path / "home", ["iris@production"], tmp_path / "logs", env=env) as server:
        with Registry(settings=settings) as registry:
            moved = time.monotonic()
            registry.set_alias("iris", "production", 2)
        server.wait_until(lambda c: c.get("/readyz").json()["models"]["iris"]["version"] == 2, timeout=25)
        assert time.monotonic() - moved < 10  # notified, not polled (the poll would take 30 s)


def test_a_server_pinned_by_digest_refuses_other_content(
    tmp_path: Path, iris: tuple[Any, np.ndarray]
) -> None:
    model, x = iris
    settings = Settings.load(home=tmp_path / "home")
    with Registry(settings=settings) as registry:
        version = registry.push("iris", model, sample_input=x[:2])
        assert registry.resolve(f"iris:1@{version.digest}") == version
        other = "sha256:" + "0" * 64
        with pytest.raises(IntegrityError, match=rf"iris:1 holds {version.digest}, not {other}"):
            registry.resolve(f"iris:1@{other}")
    refused = _cli(["serve", f"iris:1@{other}", "--port", "0"], {}, tmp_path / "home")
    assert refused.returncode == 7, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: iris:1 holds {version.digest}, not {other} as iris:1@{other} pins: refusing other "
        "content; see `shipyard show iris:1`"
    ]
    with (
        running(tmp_path / "home", [f"iris:1@{version.digest}"], tmp_path / "logs") as server,
        server.client() as client,
    ):
        assert infer(client, x[:3]) == model.predict(x[:3]).tolist()
