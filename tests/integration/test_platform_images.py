"""The image `shipyard build` makes, run as each managed platform runs it: SageMaker's `serve`
argument on 8080, Vertex AI's AIP_* variables, Azure ML's port 5001. Each run is a real container
(podman, runc) on a read-only root filesystem with a tmpfs on /tmp; its platform's health probe
must pass, the platform's predict route must answer correctly, and SIGTERM must stop it with exit
code 0.

One image serves all three: `--platform` only changes the image's ENTRYPOINT, EXPOSE and
HEALTHCHECK (their rendering is tested in tests/unit/deploy), so each run starts `shipyard
entrypoint` as the platform-specific image does. Needs podman, runc and the image
(`scripts/k8s-podman-check.sh` builds it); without them the tests skip, saying which is missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from podman_support import IMAGE, podman, podman_environment
from servers import free_port

pytestmark = pytest.mark.slow

# The platforms' own deadlines are minutes (SageMaker: /ping within 8 minutes of start, Vertex AI
# and Azure ML: their probes' initial delays and retries); this bound is far tighter on purpose.
PROBE_DEADLINE_S = 60.0
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]  # setosa: label 0


@dataclass(frozen=True)
class Platform:
    name: str
    port: int  # inside the container
    args: tuple[str, ...]
    env: dict[str, str]
    probe: str
    predict: str
    body: bytes
    content_type: str


PLATFORMS = [
    Platform("sagemaker", 8080, ("serve",), {}, "/ping", "/invocations", b"5.1,3.5,1.4,0.2\n", "text/csv"),
    Platform(
        "vertex",
        8080,
        (),
        {"AIP_HTTP_PORT": "8080", "AIP_HEALTH_ROUTE": "/health", "AIP_PREDICT_ROUTE": "/predict"},
        "/health",
        "/predict",
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}',
        "application/json",
    ),
    Platform("azure", 5001, (), {}, "/", "/score", b'{"data": [[5.1, 3.5, 1.4, 0.2]]}', "application/json"),
]


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return podman_environment(tmp_path_factory.mktemp("podman"))


@dataclass
class Running:
    name: str
    url: str
    ready_s: float


@pytest.fixture(params=PLATFORMS, ids=lambda p: p.name)
def container(
    request: pytest.FixtureRequest, podman_env: dict[str, str]
) -> Iterator[tuple[Platform, Running]]:
    platform: Platform = request.param
    port = free_port()
    name = f"shipyard-platform-{platform.name}-{port}"
    env_flags = [f"--env={k}={v}" for k, v in {"SHIPYARD_PLATFORM": platform.name, **platform.env}.items()]
    started = time.monotonic()
    podman(
        "run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp",
        "--publish", f"127.0.0.1:{port}:{platform.port}", *env_flags,
        "--entrypoint", "shipyard", IMAGE, "entrypoint", *platform.args,
        env=podman_env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        ready = None
        while ready is None and time.monotonic() - started < PROBE_DEADLINE_S:
            try:
                if httpx.get(url + platform.probe, timeout=2.0).status_code == 200:
                    ready = time.monotonic() - started
            except httpx.TransportError:
                pass
            if ready is None:  # a starting container has no event to wait on
                time.sleep(0.1)
        if ready is None:
            logs = podman("logs", name, env=podman_env, check=False).stdout[-2000:]
            pytest.fail(
                f"{platform.name}: {platform.probe} did not answer 200 in {PROBE_DEADLINE_S} s\n{logs}"
            )
        yield platform, Running(name, url, ready)
    finally:
        podman("rm", "--force", name, env=podman_env, check=False)


def label(body: object) -> object:
    """The first row's label, from `{"predictions": [...]}` or a bare list, row as dict or list."""
    rows = body["predictions"] if isinstance(body, dict) else body
    assert isinstance(rows, list) and rows, body
    row = rows[0]
    if isinstance(row, dict):
        return row["label"]
    return row[0] if isinstance(row, list) else row


def test_each_platform_probes_predicts_and_stops_cleanly(
    container: tuple[Platform, Running], podman_env: dict[str, str]
) -> None:
    platform, running = container
    print(f"{platform.name}: {platform.probe} answered 200 after {running.ready_s:.1f} s")
    answer = httpx.post(
        running.url + platform.predict,
        content=platform.body,
        headers={"Content-Type": platform.content_type, "Accept": "application/json"},
        timeout=10.0,
    )
    assert answer.status_code == 200, answer.text
    print(f"{platform.name}: {platform.predict} answered {answer.text[:300]}")
    assert label(answer.json()) == 0  # a setosa row
    assert podman("exec", running.name, "id", "-u", env=podman_env).stdout.strip() == "10001"
    touched = podman("exec", running.name, "touch", "/opt/x", env=podman_env, check=False)
    assert touched.returncode != 0  # the root filesystem is read-only
    podman("stop", "--time", "20", running.name, env=podman_env)  # SIGTERM, as every platform sends
    code = podman("inspect", running.name, "--format", "{{.State.ExitCode}}", env=podman_env).stdout.strip()
    assert code == "0"
