"""A slow model under more requests than it can take: a full queue answers 503 + Retry-After at
once, and requests whose clients hang up are withdrawn from the queue instead of run."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from serve_support import Server, assert_error, metric_sum, push_file, slow_onnx_bytes

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
    args = ["--max-batch-size", "1", "--max-queue", "3"]  # one row at a time, three waiting at most
    with serve_launcher(home, ["slow"], args=args) as server:
        yield server


def _sample(client: httpx.Client, name: str) -> float:
    """Metric `name` summed over model `slow`'s samples (0 if it has none yet)."""
    return metric_sum(client.get("/metrics").text, name, model="slow")


def test_a_full_queue_answers_503_with_retry_after_at_once(slow_server: Server) -> None:
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


def test_requests_of_clients_that_hang_up_are_not_run(slow_server: Server) -> None:
    body = b'{"instances": [[1.0, 2.0, 3.0, 4.0]]}'
    request = (
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with slow_server.client() as client:
        batches_before = _sample(client, "shipyard_batcher_batch_size_rows_count")
        sockets = []
        for _ in range(3):  # one runs, the others queue behind it; then every client leaves
            sock = socket.create_connection(("127.0.0.1", slow_server.port))
            sock.sendall(request)
            sockets.append(sock)
            time.sleep(0.01)
        for sock in sockets:
            sock.close()
        # The queue is first in, first out: once a new request is answered, the three are done.
        assert client.post(PATH, json=ROW).status_code == 200
        ran = _sample(client, "shipyard_batcher_batch_size_rows_count") - batches_before - 1
        assert ran < 3, f"{ran} batches ran for 3 requests whose clients had gone"
        assert _sample(client, "shipyard_batcher_queue_depth_requests") == 0
        assert _sample(client, "shipyard_server_in_flight_requests") == 0
        log = slow_server.stderr()
        assert not re.search(r"Traceback|ERROR", log), log
