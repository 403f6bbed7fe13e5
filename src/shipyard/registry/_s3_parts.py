"""The parts of an S3 multipart upload, sent from a pool of threads as boto3's transfer manager
sends them.

Through s3fs's async client every part went through one event-loop thread: read, checksummed,
signed and fed to the socket in 256 KiB chunks, each a hop to a thread and back, one part after
another; on moto's server that took 1.1-1.2x boto3's time for 100 MB. Here each thread reads its
own part, checksums and sends it with a plain botocore client that has the async client's
endpoint, region, options and credentials.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

_THREADS = 10  # boto3's transfer manager's default


def threaded_client(aio_client: Any, credentials: Any) -> Any:
    """A botocore client reaching what `aio_client` reaches, signing with `credentials` (frozen
    ones; None when anonymous, which the config then says)."""
    import botocore.session
    from botocore.config import Config

    # Only the options botocore knows (the async config has its own, e.g. connector_args).
    given = aio_client.meta.config._user_provided_options
    config = Config(**{name: value for name, value in given.items() if name in Config.OPTION_DEFAULTS})
    pool = Config(max_pool_connections=max(config.max_pool_connections or 0, _THREADS))
    return botocore.session.Session().create_client(
        "s3",
        region_name=aio_client.meta.region_name,
        endpoint_url=aio_client.meta.endpoint_url,
        config=config.merge(pool),
        aws_access_key_id=credentials.access_key if credentials else None,
        aws_secret_access_key=credentials.secret_key if credentials else None,
        aws_session_token=credentials.token if credentials else None,
    )


def send_parts(
    upload_part: Callable[..., dict[str, Any]],
    source: Path,
    size: int,
    part_bytes: int,
    *,
    checksum: str | None,
    sent: Callable[[int], None],
) -> list[dict[str, Any]]:
    """Upload `source` in parts of `part_bytes`, `_THREADS` at a time; the completion's list.

    `upload_part(PartNumber=, Body=)` sends one part; `sent(bytes)` is called once per part sent,
    never from two threads at once. The first failure stops the parts not yet started and is
    raised here."""
    lock = threading.Lock()
    member = f"Checksum{checksum}"

    with open(source, "rb") as fh:

        def one(number: int) -> dict[str, Any]:
            body = os.pread(fh.fileno(), part_bytes, (number - 1) * part_bytes)  # at most one part per thread
            answer = upload_part(PartNumber=number, Body=body)
            with lock:
                sent(len(body))
            part = {"PartNumber": number, "ETag": answer["ETag"]}
            if checksum and member in answer:  # S3 wants each part's checksum back on completion
                part[member] = answer[member]
            return part

        pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="shipyard-s3-part")
        try:
            futures = [pool.submit(one, n) for n in range(1, -(-size // part_bytes) + 1)]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                failure = future.exception() if future.done() else None
                if failure is not None:
                    raise failure
            return [future.result() for future in futures]
        finally:
            # On a failure or an interrupt the parts not started never start, and those in
            # flight end before the file closes under them (the caller aborts the upload).
            pool.shutdown(wait=True, cancel_futures=True)
