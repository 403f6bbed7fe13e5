"""What one request may ask of the server: rate and concurrency limits, row and element caps,
content types, and well-formed V2 shapes. Over HTTP in-process, with the fake runtime; the
shared-memory table is also driven directly as two workers would use it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from app_support import ROW, V2_ROW, Home, serve
from fake_runtime import WAIT_S, Controls

from http_errors import assert_error
from shipyard.errors import OverloadedError, RateLimitedError
from shipyard.serve.limits import Limits, ModelPolicy, Table, create_table
from shipyard.settings import ServeSettings

pytestmark = pytest.mark.anyio

V1 = "/v1/models/m:predict"
V2 = "/v2/models/m/infer"
SLOW = 0.001  # requests per second: no token comes back during a test


def test_a_token_bucket_lets_a_burst_through_then_says_when_to_retry() -> None:
    table = Table()
    bucket = table.bucket("model:m")
    assert [table.take(bucket, SLOW, 3) for _ in range(3)] == [0, 0, 0]
    wait = table.take(bucket, SLOW, 3)
    assert wait > 100  # about 1 / rate
    assert table.take(table.bucket("model:other"), SLOW, 3) == 0  # another bucket


def test_workers_sharing_the_table_share_the_limits(tmp_path: Path) -> None:
    path = create_table(str(tmp_path), workers=2)
    serve = ServeSettings(rate_limit_per_key=SLOW, rate_burst_per_key=3)
    first = Limits(serve, Table(path, 2), worker=1)
    second = Limits(serve, Table(path, 2), worker=2)
    policy = ModelPolicy(rate=None, burst=1, concurrency=1, timeout_s=60)

    admitted = 0
    for limits in (first, second, first, second):
        try:
            held = limits.admit("m", ModelPolicy(None, 1, None, 60), caller="key-1")
            admitted += 1
            assert held is None
        except RateLimitedError as exc:
            assert "serve.rate_limit_per_key" in exc.message and exc.retry_after_s > 0
    assert admitted == 3
    assert first.admit("m", ModelPolicy(None, 1, None, 60), caller="key-2") is None  # its own bucket

    running = first.admit("m", policy, caller=None)
    assert running is not None
    with pytest.raises(OverloadedError, match=r"serve\.max_concurrency_per_model"):
        second.admit("m", policy, caller=None)
    running.release()
    again = second.admit("m", policy, caller=None)
    assert again is not None
    # A worker replaced under the same number starts from zero: its predecessor's count is gone.
    Limits(serve, Table(path, 2), worker=2)
    assert first.admit("m", policy, caller=None) is not None


async def test_a_model_over_its_rate_answers_429_with_retry_after(fake: Controls, home: Home) -> None:
    home.push("m")
    home.push("other")
    async with serve(home, ["m", "other"], rate_limit_per_model=SLOW, rate_burst_per_model=2) as served:
        for _ in range(2):
            assert (await served.client.post(V1, json={"instances": [ROW]})).status_code == 200
        refused = await served.client.post(V1, json={"instances": [ROW]})
        assert_error(refused, 429, "model 'm'", "serve.rate_limit_per_model")
        assert int(refused.headers["retry-after"]) > 100
        other = await served.client.post("/v1/models/other:predict", json={"instances": [ROW]})
        assert other.status_code == 200
    assert fake.predictions[1] == 3  # two of m, one of other (both are version 1)


async def test_a_versions_serving_option_sets_its_rate(fake: Controls, home: Home) -> None:
    home.push("m", serving={"rate_limit_per_model": SLOW, "rate_burst_per_model": 1})
    async with serve(home, ["m"]) as served:
        assert (await served.client.post(V2, json=V2_ROW)).status_code == 200
        assert_error(await served.client.post(V2, json=V2_ROW), 429, "rate limit of 0.001")


async def test_a_model_at_its_concurrency_limit_answers_503(fake: Controls, home: Home) -> None:
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m"], max_concurrency_per_model=1) as served:
        running = asyncio.create_task(served.client.post(V1, json={"instances": [ROW]}))
        await held.wait_reached()
        refused = await served.client.post(V1, json={"instances": [ROW]})
        assert_error(refused, 503, "limit of 1 concurrent", "serve.max_concurrency_per_model")
        assert refused.headers["retry-after"] == "1"
        held.opened.set()
        assert (await asyncio.wait_for(running, WAIT_S)).status_code == 200
        assert (await served.client.post(V1, json={"instances": [ROW]})).status_code == 200


async def test_requests_over_the_row_or_element_cap_get_413(fake: Controls, home: Home) -> None:
    home.push("m")
    async with serve(home, ["m"], max_rows_per_request=3, max_elements_per_request=10) as served:
        post = served.client.post
        assert_error(
            await post(V1, json={"instances": [ROW] * 4}), 413, "4 rows", "serve.max_rows_per_request"
        )
        v2 = {"inputs": [{"name": "X", "shape": [4, 4], "datatype": "FP32", "data": ROW * 4}]}
        assert_error(await post(V2, json=v2), 413, "serve.max_rows_per_request")
        assert_error(await post("/invocations", json={"instances": [ROW] * 4}), 413, "4 rows")
        assert_error(
            await post(V1, json={"instances": [ROW] * 3}), 413, "12 elements", "elements_per_request"
        )
        assert (await post(V1, json={"instances": [ROW] * 2})).status_code == 200
    assert fake.predictions[1] == 1


@pytest.mark.parametrize("path", [V1, "/invocations", "/v1/embeddings"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_inference_takes_json_only_as_json(
    fake: Controls, home: Home, path: str, content_type: str | None
) -> None:
    home.push("m")
    headers = {"content-type": content_type} if content_type else {}
    async with serve(home, ["m"]) as served:
        answer = await served.client.post(path, content=b'{"instances": [[1, 2, 3, 4]]}', headers=headers)
    message = answer.json()["error"]
    message = message if isinstance(message, str) else message["message"]
    assert answer.status_code == 415, answer.text
    assert "application/json" in message
    assert fake.predictions[1] == 0


async def test_v2_takes_json_binary_or_no_type_as_tritonclient_sends(fake: Controls, home: Home) -> None:
    home.push("m")
    body = b'{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}'
    async with serve(home, ["m"]) as served:
        assert (await served.client.post(V2, content=body)).status_code == 200
        typed = await served.client.post(V2, content=body, headers={"content-type": "application/json"})
        assert typed.status_code == 200
        plain = await served.client.post(V2, content=body, headers={"content-type": "text/plain"})
        assert_error(plain, 415, "application/json", "application/octet-stream")


async def test_a_v2_shape_of_booleans_is_a_400_naming_shape(fake: Controls, home: Home) -> None:
    home.push("m")
    bad = {"inputs": [{"name": "X", "shape": [True, 4], "datatype": "FP32", "data": ROW}]}
    async with serve(home, ["m"]) as served:
        assert_error(await served.client.post(V2, json=bad), 400, "'shape'")
