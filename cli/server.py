"""The local Prefect API server of one ``maskclip`` command: started by the command, dead with it.

Without ``PREFECT_API_URL`` Prefect starts an ephemeral server itself, and that server outlives a
``kill -9`` of its parent, dies first on Ctrl-C (it shares the terminal's process group, so the flow then
retries against a dead API for a minute) and gives up after 20 s on a busy machine whose first start also
migrates the database. ``owned_prefect_api()`` runs the same server (Prefect's public ``create_app`` under
uvicorn) in its own session, asks the kernel to kill it when the command's process dies, waits for it as
long as a first start needs, and points the command at it with ``temporary_settings``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

# Prefect's own setting for how long to wait; its default (20 s) is too short for a first start on a busy
# machine, so a command uses STARTUP_TIMEOUT_S unless the user set it.
STARTUP_TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_TIMEOUT_S = 600
DRAIN_TIMEOUT_S = 5
PATIENCE_NOTE_S = 5  # a slower start gets one line, so the wait is not silent

# Runs in the server process. PR_SET_PDEATHSIG: the kernel sends SIGKILL when the parent dies, however it
# dies; elsewhere (no prctl) a thread watches the parent id. Checking the parent after arming closes the race
# with a parent that died before.
_SERVER_MAIN = """
import ctypes, ctypes.util, os, signal, socket, sys, threading, time
parent, fd = int(sys.argv[1]), int(sys.argv[2])
try:
    ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl(1, signal.SIGKILL)
except (AttributeError, OSError):
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, daemon=True).start()
if os.getppid() != parent:
    sys.exit(0)
import uvicorn
from prefect.server.api.server import create_app
config = uvicorn.Config(create_app(ephemeral=True, final=True), log_level="error", lifespan="on")
uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])
"""


class PrefectServerUnavailable(RuntimeError):
    """The local Prefect server did not come up; the message names the fix."""


def startup_timeout() -> float:
    """The user's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (environment or profile), else ours."""
    from prefect.settings import get_current_settings

    user_set = get_current_settings().to_environment_variables(exclude_unset=True)
    if STARTUP_TIMEOUT_SETTING in user_set:
        return float(user_set[STARTUP_TIMEOUT_SETTING])
    return float(STARTUP_TIMEOUT_S)


def needs_local_server() -> bool:
    """True when Prefect would start an ephemeral server: no API URL and ephemeral mode allowed."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())


class LocalServer:
    """One uvicorn process serving Prefect's API on a port bound here (no race for a free port)."""

    def __init__(self, timeout: float) -> None:
        from prefect.settings import get_current_settings

        self.timeout = timeout
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self._log = tempfile.TemporaryFile()
        # The settings of this process (profile, PREFECT_HOME, database) travel to the server.
        env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
        env.pop("PREFECT_API_URL", None)
        fd = listener.fileno()
        try:
            # Its own session: Ctrl-C in the terminal reaches the command, which then still has its API.
            self.process = subprocess.Popen(
                [sys.executable, "-c", _SERVER_MAIN, str(os.getpid()), str(fd)],
                pass_fds=(fd,),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            listener.close()  # the server holds its own copy; the port frees when it exits

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait_until_healthy(self) -> None:
        import httpx

        started = time.monotonic()
        deadline = started + self.timeout
        said = False
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if not said and time.monotonic() - started > PATIENCE_NOTE_S:
                    print(
                        "maskclip: waiting for the local Prefect server (a first start creates its database)...",
                        file=sys.stderr,
                        flush=True,
                    )
                    said = True
                if self.process.poll() is not None:
                    raise PrefectServerUnavailable(
                        f"the local Prefect server exited with code {self.process.returncode}: {self._last_line()}"
                    )
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise PrefectServerUnavailable(
            f"the local Prefect server did not start within {self.timeout:.0f} s (a busy machine, or the first "
            f"start migrating its database); set {STARTUP_TIMEOUT_SETTING} higher, or start one with "
            "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )

    def stop(self) -> None:
        """Let Prefect's log and event workers deliver what they hold, then end the server."""
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        if self.process.poll() is None:
            APILogWorker.drain_all(timeout=DRAIN_TIMEOUT_S)
            EventsWorker.drain_all(timeout=DRAIN_TIMEOUT_S)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def _last_line(self) -> str:
        self._log.seek(0)
        lines = [line for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else "no output"


@contextmanager
def owned_prefect_api() -> Iterator[None]:
    """Run the body against a Prefect API: the configured one, else a local server owned by this process."""
    if not needs_local_server():
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = LocalServer(startup_timeout())
    try:
        server.wait_until_healthy()
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        server.stop()
