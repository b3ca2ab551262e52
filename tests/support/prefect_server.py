"""A real ``prefect server`` on 127.0.0.1 for tests that need the API, the UI or ``prefect deploy``.

Started in its own ``PREFECT_HOME`` (a fresh SQLite database) and its own process group, so stopping it kills
uvicorn and everything it started; subprocesses reach it through :meth:`PrefectServer.env`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 240.0  # first start migrates the database; the test machines are busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrefectServer:
    url: str  # http://127.0.0.1:PORT
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a subprocess that talks to this server (and never starts its own)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        env.update(extra)
        return env

    def stop(self) -> None:
        _stop_group(self.process)


def start_prefect_server(home: Path) -> PrefectServer:
    """``prefect server start`` on a free port of 127.0.0.1; returns once ``/api/health`` answers."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env["PREFECT_UI_API_URL"] = f"{url}/api"  # the UI in a browser calls this; its default is port 4200
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stop() takes uvicorn with it
        )
    server = PrefectServer(url=url, home=home, process=process, log=log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"prefect server did not answer within {STARTUP_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def run_prefect(
    server: PrefectServer, *args: str, cwd: Path | str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``prefect ARGS`` against ``server`` with stdin closed (a prompt would read end of input and fail)."""
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=cwd,
        env=server.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group ``process`` leads, SIGKILL it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def process_worker(server: PrefectServer, pool: str, cwd: Path | str, log: Path, **env: str) -> Iterator[None]:
    """``prefect worker start --pool POOL`` against ``server`` (its own process group), stopped on exit."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--prefetch-seconds", "5"],
            cwd=cwd,
            env=server.env(**env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
    finally:
        _stop_group(process)


def api(server: PrefectServer, path: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
    """One JSON call to the server's REST API (POST when there is a body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.api_url}{path}",
        data=data,
        headers={"Content-Type": "application/json"},
        method=method or ("POST" if data is not None else "GET"),
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            payload = r.read()
    except urllib.error.HTTPError as e:  # the server says why (e.g. parameters the deployment's schema refuses)
        raise AssertionError(f"{method or 'POST'} {path}: {e.code} {e.read().decode(errors='replace')}") from e
    return json.loads(payload) if payload else None


def deployment_id(server: PrefectServer, name: str) -> str:
    """The id of deployment ``flow-name/deployment-name``."""
    return str(api(server, f"/deployments/name/{name}")["id"])


def run_deployment(server: PrefectServer, name: str, parameters: dict[str, Any]) -> str:
    """Create a flow run of deployment ``name`` with ``parameters``; returns its id (a worker picks it up)."""
    run = api(server, f"/deployments/{deployment_id(server, name)}/create_flow_run", {"parameters": parameters})
    return str(run["id"])


def wait_for_final_state(server: PrefectServer, flow_run_id: str, timeout: float = 300) -> dict[str, Any]:
    """The flow run once its state is final (Completed, Failed, Crashed, Cancelled)."""
    deadline = time.monotonic() + timeout
    while True:
        run = api(server, f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in FINAL_STATES or time.monotonic() > deadline:
            return run
        time.sleep(1.0)


def run_logs(server: PrefectServer, flow_run_id: str) -> list[dict[str, Any]]:
    """Every log line of a flow run (and of its tasks), oldest first."""
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    return api(server, "/logs/filter", body)


FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
