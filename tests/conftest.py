"""Shared fixtures. ``s3_server``: an S3 endpoint (moto) on localhost for the whole session."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

# Hermetic runs: no telemetry, no model-hub retries, text-classifier disk cache in a throwaway directory.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MASKCLIP_CACHE_DIR", tempfile.mkdtemp(prefix="maskclip-test-cache-"))

_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    """A running moto S3 endpoint and what clients need to reach it."""

    endpoint_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a new empty bucket and return its name."""
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=name)
        return name

    def fresh_url(self, subpath: str = "") -> str:
        """``s3://<new bucket>/<subpath>``."""
        url = f"s3://{self.make_bucket()}"
        return f"{url}/{subpath.strip('/')}" if subpath.strip("/") else url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Start moto's S3 server on a free port with fake credentials in the environment."""
    moto_server = pytest.importorskip("moto.server")
    saved = {k: os.environ.get(k) for k in [*_FAKE_AWS_ENV, "NO_PROXY", "no_proxy"]}
    os.environ.update(_FAKE_AWS_ENV)
    for key in ("NO_PROXY", "no_proxy"):  # never send localhost traffic through a proxy
        os.environ[key] = ",".join(filter(None, [os.environ.get(key), "127.0.0.1", "localhost"]))
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield S3Server(
            endpoint_url=endpoint,
            storage_options={
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            },
        )
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
