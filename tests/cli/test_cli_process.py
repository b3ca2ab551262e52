"""A real ``maskclip label`` process and the Prefect server it starts: startup timeout, ``kill -9``, Ctrl-C.

Each run gets its own PREFECT_HOME (no PREFECT_API_URL), so the command starts its own local server; the
module shares one home so the database is migrated once. "Ours" is every process whose environment holds
that PREFECT_HOME: after the command ends, none may remain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process-group and PR_SET_PDEATHSIG checks: Linux")

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "maskclip-tiny-ViT", "--pretrained", "none", "--short-side", "64", "--crop", "64", "--stride", "32"]
# Generous on a shared CI machine; the assertions on speed are separate and tighter.
WAIT_S = 600


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough small photos that labeling them one batch at a time lasts well past the moment we stop it."""
    src = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(src / f"p{i:03d}.png")
    return src


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


def command_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_EPHEMERAL_ENABLED="true",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        **extra,
    )
    return env


def start_label(images: Path, dataset: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    argv = ["label", "--source", str(images), "--dataset", str(dataset), "--classes", "red, green, blue"]
    argv += [*TINY, "--batch-size", "1", "--concurrency", "1", "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *argv],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,  # its own process group, as a terminal gives a foreground job
    )


def ours(prefect_home: Path) -> list[psutil.Process]:
    """Live processes started with this PREFECT_HOME (the command, its server, anything they spawned)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("PREFECT_HOME") == str(prefect_home) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_for_labeling(proc: subprocess.Popen, dataset: Path, log: Path) -> psutil.Process:
    """Wait until batches are being written; return the command's Prefect server process."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"maskclip label ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        written = list((dataset / "images").glob("*.parquet")) if (dataset / "images").is_dir() else []
        if written:
            servers = [
                child
                for child in psutil.Process(proc.pid).children()
                if "prefect.server.api.server" in " ".join(child.cmdline())
            ]
            assert len(servers) == 1, [c.cmdline() for c in psutil.Process(proc.pid).children()]
            return servers[0]
        time.sleep(0.2)
    pytest.fail(f"no batch written within {WAIT_S} s:\n{log.read_text()[-3000:]}")


def wait_until_gone(prefect_home: Path, seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while (left := ours(prefect_home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture
def cleanup(prefect_home: Path) -> Iterator[None]:
    yield
    for proc in ours(prefect_home):  # a failed test must not leave its processes to the next
        proc.kill()


def test_kill_9_leaves_no_server_behind(images, prefect_home, tmp_path, cleanup):
    log = tmp_path / "stderr.txt"
    proc = start_label(images, tmp_path / "dataset", command_env(prefect_home), log)
    server = wait_for_labeling(proc, tmp_path / "dataset", log)
    assert server.status() != psutil.STATUS_ZOMBIE
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    left = wait_until_gone(prefect_home, 10)
    assert not left, [p.cmdline() for p in left]
    assert not psutil.pid_exists(server.pid) or server.status() == psutil.STATUS_ZOMBIE


def test_ctrl_c_stops_within_seconds_with_one_line(images, prefect_home, tmp_path, cleanup):
    log = tmp_path / "stderr.txt"
    proc = start_label(images, tmp_path / "dataset", command_env(prefect_home), log)
    wait_for_labeling(proc, tmp_path / "dataset", log)
    before = len(log.read_text().splitlines())
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # the whole foreground group, as a terminal's Ctrl-C
    said = None
    while proc.poll() is None and time.monotonic() - sent < 60:
        if said is None and "interrupted" in log.read_text():
            said = time.monotonic() - sent
        time.sleep(0.05)
    rc = proc.wait(timeout=5)
    took = time.monotonic() - sent
    err = log.read_text()
    after = [line for line in err.splitlines()[before:] if line.strip()]
    print(f"ctrl-c: message after {said} s, exit after {took:.2f} s")
    assert rc == 130, err[-3000:]
    assert took < 5, f"exit after {took:.1f} s, message after {said} s:\n{err[-3000:]}"
    assert "interrupted; run again to resume" in err
    assert len(after) <= 3 and "Traceback" not in err, err[-3000:]  # the message (and the bar's last frame)
    left = wait_until_gone(prefect_home, 10)
    assert not left, [p.cmdline() for p in left]


def test_server_startup_timeout_is_one_line_naming_the_fix(images, tmp_path, cleanup):
    home = tmp_path / "fresh-home"  # a first start: the database must be created, never within a second
    env = command_env(home, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    log = tmp_path / "stderr.txt"
    proc = start_label(images, tmp_path / "dataset", env, log)
    rc = proc.wait(timeout=WAIT_S)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert rc == 2, lines
    assert lines[-1].startswith("maskclip: error: the local Prefect server did not start within 1 s")
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in lines[-1] and "PREFECT_API_URL" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    left = wait_until_gone(home, 10)
    assert not left, [p.cmdline() for p in left]
    assert not (tmp_path / "dataset" / "images").exists()  # nothing was labeled


def test_generous_startup_timeout_unless_the_user_set_one():
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    from cli.server import STARTUP_TIMEOUT_S, startup_timeout

    assert STARTUP_TIMEOUT_S >= 300 > PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.default()  # 20 s
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:  # this session's user set none
        assert startup_timeout() == STARTUP_TIMEOUT_S
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 42}):
        assert startup_timeout() == 42
