"""Readiness while an alias points at a version that cannot be served: the old version keeps
answering, so the server stays ready (a probe failing on every replica would take the whole
service down), and /readyz says which target failed and why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from app_support import V2_ROW, Home, serve
from fake_runtime import Controls

pytestmark = pytest.mark.anyio

NEVER_S = 3600.0  # the poller never runs on its own: refresh() is called directly


async def test_readyz_names_an_alias_target_that_fails_its_integrity_check(
    fake: Controls, home: Home, tamper: Callable[[Path], None]
) -> None:
    home.push("m", alias="prod")
    damaged = home.push("m")
    tamper(home.registry.artifact_path(damaged) / "model.onnx")
    async with serve(home, ["m@prod"], poll_interval_s=NEVER_S) as served:
        home.registry.set_alias("m", "prod", 2)
        await served.repository.refresh(served.repository.models["m"])

        readyz = await served.client.get("/readyz")
        assert readyz.status_code == 200
        entry = readyz.json()["models"]["m"]
        assert entry["state"] == "ready" and entry["version"] == 1
        assert "version 2" in entry["reason"] and "integrity" in entry["reason"]
        assert (await served.client.post("/v2/models/m/infer", json=V2_ROW)).json()["model_version"] == "1"
