"""A real S3 endpoint for the tests: moto's server (moto_runner.py) in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest


@dataclass
class S3Endpoint:
    """moto's S3 server on loopback (tests/integration/moto_runner.py), with its request counts."""

    url: str
    process: subprocess.Popen[str]

    def env(self) -> dict[str, str]:
        """What a process needs to reach it: the standard AWS variables, no Shipyard setting."""
        return {
            "AWS_ACCESS_KEY_ID": "testing-key",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.url,
        }

    def client(self) -> Any:
        import boto3

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self) -> str:
        """A fresh, empty bucket."""
        name = f"shipyard-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def counts(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/_counts", timeout=10).json())

    def wait_for(self, op: str, count: int) -> None:
        """Block until the server has received `count` requests of `op` (e.g. UploadPart)."""
        seen = httpx.get(f"{self.url}/_wait", params={"op": op, "count": count}, timeout=40).json()
        assert seen.get(op, 0) >= count, f"no {op} within 30 s: {seen}"


def start_moto(env: dict[str, str] | None = None) -> S3Endpoint:
    runner = Path(__file__).with_name("moto_runner.py")
    process = subprocess.Popen(
        [sys.executable, str(runner)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until it listens (or dies: empty line)
    if not line.startswith("PORT "):
        process.kill()
        pytest.fail(f"moto's S3 server did not start (exit {process.wait()})")
    return S3Endpoint(f"http://127.0.0.1:{int(line.split()[1])}", process)
