"""A slow model under more requests than it can take: a full queue answers 503 + Retry-After
once a request has waited `--max-queue-wait-s` for a place. That requests whose clients hang up
are withdrawn instead of run is counted exactly, with a fake runtime, in
tests/unit/serve/test_overload.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from serve_support import push_file, slow_onnx_bytes

from http_errors import assert_error
from prometheus_text import metric_sum
from servers import Server
from shipyard.registry import Registry
from shipyard.settings import Settings

ROW = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
PATH = "/v1/models/slow:predict"


@pytest.fixture(scope="module")
def slow_server(
    tmp_path_factory: pytest.TempPathFactory, serve_launcher: Callable[..., Any]
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("slow-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        push_file(registry, "slow", slow_onnx_bytes(), tmp_path_factory.mktemp("slow-files"))
    # One row at a time, three queued at most, and a request finding the queue full waits 10 ms
    # for a place: a call takes tens of milliseconds, so most of the 16 below are refused.
    args = ["--max-batch-size", "1", "--max-queue", "3", "--max-queue-wait-s", "0.01"]
    with serve_launcher(home, ["slow"], args=args) as server:
        yield server


def _sample(client: httpx.Client, name: str) -> float:
    """Metric `name` summed over model `slow`'s samples (0 if it has none yet)."""
    return metric_sum(client.get("/metrics").text, name, model="slow")


def test_a_full_queue_answers_503_with_retry_after(slow_server: Server) -> None:
    with slow_server.client() as client, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: client.post(PATH, json=ROW), range(16)))
        overloaded = _sample(client, "shipyard_server_errors_total")
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert served, "the model answered nobody"
    assert len(refused) >= 16 - 1 - 3 - 2, [a.status_code for a in answers]  # running + queued + slack
    for answer in refused:
        assert_error(answer, 503, "queue is full")
        assert answer.headers["retry-after"] == "1"
    assert len({a.json()["predictions"][0][0] for a in served}) == 1  # same row, same answer
    assert overloaded >= len(refused)
