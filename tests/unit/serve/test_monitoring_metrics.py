"""The metrics an operator alerts on, in-process: refusals by reason, model readiness and sizes,
this process's resources and the registry's disk use.

The metrics live in prometheus_client's process-wide registry, shared by every test of this
process: each test compares figures before and after what it does.
"""

from __future__ import annotations

import asyncio
import os
import resource

import httpx
import pytest
from app_support import ROW, Home, serve, until
from fake_runtime import Controls
from prometheus_client.parser import text_string_to_metric_families

from http_errors import assert_error

pytestmark = pytest.mark.anyio

PATH = "/v1/models/m:predict"
BODY = {"instances": [ROW]}
REJECTED = "shipyard_server_rejected_total"


async def scrape(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None
) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


async def value(
    client: httpx.AsyncClient, name: str, headers: dict[str, str] | None = None, **labels: str
) -> float:
    """The sum of `name`'s samples with `labels` (0 when there are none)."""
    samples = (await scrape(client, headers)).get(name, [])
    return sum(v for have, v in samples if all(have.get(k) == w for k, w in labels.items()))


async def test_refusals_are_counted_by_reason_beside_the_errors_by_kind(fake: Controls, home: Home) -> None:
    home.push("m")
    async with serve(home, ["m"], max_rows_per_request=2, rate_limit_per_model=1000) as served:
        client = served.client
        too_large = await value(client, REJECTED, model="m", reason="too_large")
        assert_error(await client.post(PATH, json={"instances": [ROW] * 3}), 413)
        assert await value(client, REJECTED, model="m", reason="too_large") == too_large + 1
        assert await value(client, REJECTED, reason="invalid_input") == 0  # a bad request is no refusal

        deadline = await value(client, REJECTED, model="m", reason="deadline")
        held = fake.hold_predict(1)
        assert_error(await client.post(PATH, json=BODY, headers={"X-Request-Timeout": "0.05"}), 504)
        held.opened.set()
        assert await value(client, REJECTED, model="m", reason="deadline") == deadline + 1
        errors = await value(client, "shipyard_server_errors_total", model="m", kind="deadline_exceeded")
        assert errors >= 1


async def test_a_full_queue_is_its_own_reason(fake: Controls, home: Home) -> None:
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m"], max_batch_size=1, max_queue=1) as served:
        client = served.client
        before = await value(client, REJECTED, model="m", reason="queue_full")
        batcher = served.repository.models["m"].versions[1].batcher
        assert batcher is not None
        running = asyncio.create_task(client.post(PATH, json=BODY))
        await held.wait_reached()
        queued = asyncio.create_task(client.post(PATH, json=BODY))
        await until(lambda: batcher.depth == 1, "the second request queues")
        refused = await client.post(PATH, json=BODY)
        assert_error(refused, 503, "queue is full")
        assert await value(client, REJECTED, model="m", reason="queue_full") == before + 1
        assert await value(client, "shipyard_batcher_queue_capacity_requests", model="m", version="1") == 1
        held.opened.set()
        assert (await running).status_code == 200
        assert (await queued).status_code == 200


async def test_rate_limits_and_keys_refuse_with_their_reason(fake: Controls, home: Home) -> None:
    home.push("m")
    _, reader = home.registry.create_key("reader", ["read"])
    _, inferrer = home.registry.create_key("inferrer", ["infer:m"])
    _, admin = home.registry.create_key("admin", ["admin", "read"])
    async with serve(home, ["m"], rate_limit_per_model=0.001, auth_cache_ttl_s=0) as served:
        client = served.client
        as_admin = {"Authorization": f"Bearer {admin}"}
        reasons = ("unauthorized", "forbidden", "rate_limited")
        before = {r: await value(client, REJECTED, headers=as_admin, model="m", reason=r) for r in reasons}
        assert_error(await client.post(PATH, json=BODY), 401)
        assert_error(await client.post(PATH, json=BODY, headers={"Authorization": f"Bearer {reader}"}), 403)
        as_inferrer = {"Authorization": f"Bearer {inferrer}"}
        assert (await client.post(PATH, json=BODY, headers=as_inferrer)).status_code == 200  # the burst of 1
        assert_error(await client.post(PATH, json=BODY, headers=as_inferrer), 429)
        anonymous = await value(client, REJECTED, headers=as_admin, model="-", reason="unauthorized")
        assert_error(await client.get("/metrics"), 401)  # no model in the path: labelled "-"
        after = {r: await value(client, REJECTED, headers=as_admin, model="m", reason=r) for r in reasons}
        assert after == {r: before[r] + 1 for r in reasons}
        now = await value(client, REJECTED, headers=as_admin, model="-", reason="unauthorized")
        assert now == anonymous + 1


async def test_models_report_readiness_artifact_size_and_memory(fake: Controls, home: Home) -> None:
    version = home.push("m")
    async with serve(home, ["m"], max_queue=7, admin_token="s3cret") as served:
        client = served.client
        assert await value(client, "shipyard_server_model_ready", model="m") == 1
        assert await value(client, "shipyard_model_artifact_bytes", model="m", version="1") == version.size
        assert await value(client, "shipyard_batcher_queue_capacity_requests", model="m", version="1") == 7
        memory = (await scrape(client))["shipyard_model_resident_memory_bytes"]
        assert any(labels == {"model": "m", "version": "1"} and v >= 0 for labels, v in memory)
        disk = "shipyard_registry_disk_bytes"

        async def disk_known() -> bool:
            return await value(client, disk) > 0

        deadline = asyncio.get_running_loop().time() + 10
        while not await disk_known():  # the first sample walks the registry in a thread
            assert asyncio.get_running_loop().time() < deadline, "the registry's size never came"
            await asyncio.sleep(0.01)
        assert await value(client, disk) >= version.size
        assert await value(client, disk) == home.registry.disk_bytes()

        unloaded = await client.post(
            "/v2/repository/models/m/unload", headers={"Authorization": "Bearer s3cret"}
        )
        assert unloaded.status_code == 200, unloaded.text
        after = await scrape(client)
        assert "m" not in {labels["model"] for labels, _ in after.get("shipyard_server_model_ready", [])}
        assert await value(client, "shipyard_model_artifact_bytes", model="m", version="1") == 0


async def test_a_model_still_loading_is_not_ready(fake: Controls, home: Home) -> None:
    home.push("m")
    gate = fake.hold_load(1)
    async with serve(home, ["m"], wait=False) as served:
        await gate.wait_reached()
        assert await value(served.client, "shipyard_server_model_ready", model="m") == 0
        gate.opened.set()
        await asyncio.wait_for(asyncio.shield(served.loading), 10)
        assert await value(served.client, "shipyard_server_model_ready", model="m") == 1


async def test_the_process_reports_its_cpu_memory_and_files(fake: Controls, home: Home) -> None:
    home.push("m")
    async with serve(home, ["m"]) as served:
        samples = await scrape(served.client)

        def only(name: str) -> float:
            values = [v for labels, v in samples[name] if labels == {"worker": "0"}]
            assert len(values) == 1, samples[name]
            return values[0]

        assert only("shipyard_process_cpu_seconds_total") > 0
        rss = only("shipyard_process_resident_memory_bytes")
        with open(f"/proc/{os.getpid()}/status") as status:
            vm_rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
        assert abs(rss - vm_rss) < 0.2 * vm_rss, (rss, vm_rss)  # both read now, within a few allocations
        files = only("shipyard_process_open_files")
        assert 3 <= files <= len(os.listdir("/proc/self/fd")) + 16
        assert only("shipyard_process_max_open_files") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert only("shipyard_process_start_time_seconds") > 1.6e9
