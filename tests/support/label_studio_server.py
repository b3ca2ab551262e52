"""A real Label Studio server for the test session, from its own virtualenv (``.venv-label-studio``).

``label_studio_process`` starts it (127.0.0.1, a free port, a temporary data dir and a Local Files document
root, a user with a known legacy token, no version check or analytics) without waiting, so a test module can
prepare its data while the server migrates its database (a minute or more on a busy machine);
``label_studio_server`` waits until ``/health`` answers. The whole process group is stopped at the end of
the session. Without ``.venv-label-studio`` (``make label-studio`` creates it) the tests skip, saying so.

Migrating a fresh database takes most of the start-up time, so the first session keeps a copy of the freshly
migrated database (with the test user, nothing else) per Label Studio version under
``~/.cache/maskclip-tests/`` (``MASKCLIP_TEST_CACHE`` elsewhere); later sessions start from a copy of it.

Register the fixtures in a test module with ``from support.label_studio_server import *  # noqa: F403``
or by importing the two names.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-label-studio"
EXECUTABLE = VENV / "bin" / "label-studio"
USER = "reviewer@example.com"
PASSWORD = "maskclip-test-password"
TOKEN = "maskclip0test0legacy0token0000000000000"  # a legacy token: set at user creation, no UI needed
STARTUP_TIMEOUT_S = 420.0  # first start migrates a fresh SQLite database: 90-160 s on a loaded 2-core machine
DATABASE = "label_studio.sqlite3"  # in the data dir


def _template() -> Path | None:
    """Where this Label Studio version's migrated database is kept between sessions."""
    versions = sorted(VENV.glob("lib/python*/site-packages/label_studio-*.dist-info"))
    if not versions:
        return None
    cache = Path(os.environ.get("MASKCLIP_TEST_CACHE", Path.home() / ".cache" / "maskclip-tests"))
    return cache / f"{versions[-1].name.removesuffix('.dist-info')}-{USER}.sqlite3"


@dataclass
class LabelStudioServer:
    url: str
    api_key: str
    document_root: Path
    data_dir: Path
    log: Path
    process: subprocess.Popen
    template: Path | None = None  # to fill once the server is up, when no copy was there at start

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Block until ``/health`` answers 200; fail with the log's tail if the server died or never answered."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Label Studio exited with {self.process.returncode}:\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    self._keep_template()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        pytest.fail(f"Label Studio did not answer /health within {timeout:.0f} s:\n{self._log_tail()}")

    def client(self, api_key: str | None = None):  # noqa: ANN201 - label_studio_sdk is imported lazily
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=api_key or self.api_key)

    def stop(self) -> None:
        """SIGTERM to the process group (the server and anything it started), SIGKILL after 15 s."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
            except ProcessLookupError:
                pass

    def _keep_template(self) -> None:
        """Copy the just-migrated database (sqlite's online backup: consistent while the server runs)."""
        if self.template is None or self.template.exists():
            return
        self.template.parent.mkdir(parents=True, exist_ok=True)
        partial = self.template.with_name(f".{self.template.name}.{os.getpid()}")
        with closing(sqlite3.connect(self.data_dir / DATABASE)) as source, closing(sqlite3.connect(partial)) as copy:
            source.backup(copy)
        os.replace(partial, self.template)
        self.template = None

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def label_studio_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """The server, started but perhaps not ready yet (see ``LabelStudioServer.wait_ready``)."""
    if not EXECUTABLE.exists():
        pytest.skip(f"no Label Studio server to test against: {VENV} is absent (`make label-studio` creates it)")
    base = tmp_path_factory.mktemp("label-studio")
    document_root = base / "files"
    data_dir = base / "data"
    document_root.mkdir()
    data_dir.mkdir()
    template = _template()
    if template is not None and template.exists():
        shutil.copyfile(template, data_dir / DATABASE)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LABEL_STUDIO_"))}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        # user and legacy token created at start, non-interactively (label-studio's _create_user reads these)
        LABEL_STUDIO_USERNAME=USER,
        LABEL_STUDIO_PASSWORD=PASSWORD,
        LABEL_STUDIO_USER_TOKEN=TOKEN,
        LATEST_VERSION_CHECK="false",  # no request to pypi.org
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        SSRF_PROTECTION_ENABLED="false",  # the tests' S3 server (moto) listens on 127.0.0.1, which it blocks
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    log = base / "label-studio.log"
    command = [
        str(EXECUTABLE),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--enable-legacy-api-token",  # the organization accepts the token above as well as access tokens
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LabelStudioServer(
        url=f"http://127.0.0.1:{port}",
        api_key=TOKEN,
        document_root=document_root,
        data_dir=data_dir,
        log=log,
        process=process,
        template=template,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio_server(label_studio_process: LabelStudioServer) -> LabelStudioServer:
    """The server, answering requests."""
    label_studio_process.wait_ready()
    return label_studio_process
