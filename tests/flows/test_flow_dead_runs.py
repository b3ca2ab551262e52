"""A run whose process dies does not stay Running: ``automations/crash-silent-runs.yaml`` on a real Prefect server
sets the dead run and its sub-runs Crashed once their heartbeats stop."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.block_photos import write_block_photos
from support.flow_kill_script import KILLED_EXIT_CODE
from support.prefect_server import PrefectServer, api, run_prefect
from support.tiny_labeler import KEEP_ALL, TINY_SPEC

REPO = Path(__file__).resolve().parents[2]
AUTOMATION = REPO / "automations" / "crash-silent-runs.yaml"
HEARTBEAT_S = 30  # Prefect's shortest heartbeat period
WITHIN_S = 40  # the shipped 600 s, shortened for the test (still over one heartbeat period)


def _runs_in_state(server: PrefectServer, state: str) -> dict[str, dict[str, Any]]:
    body = {"flow_runs": {"state": {"type": {"any_": [state]}}}}
    return {r["id"]: r for r in api(server, "/flow_runs/filter", body)}


@pytest.fixture
def crash_silent_runs(prefect_server: PrefectServer) -> Any:
    """The shipped automation, with a test-sized window; deleted after (other tests' runs beat every 180 s)."""
    automation = yaml.safe_load(AUTOMATION.read_text())
    assert automation["trigger"]["within"] == 600 and automation["actions"][0]["state"] == "CRASHED"
    automation["trigger"]["within"] = WITHIN_S
    created = run_prefect(prefect_server, "automation", "create", "--from-json", json.dumps(automation), cwd=REPO)
    assert created.returncode == 0, created.stdout + created.stderr
    [made] = [a for a in api(prefect_server, "/automations/filter", {}) if a["name"] == automation["name"]]
    try:
        yield
    finally:
        api(prefect_server, f"/automations/{made['id']}", method="DELETE")


def test_a_killed_run_and_its_sub_run_end_crashed(
    prefect_server: PrefectServer, crash_silent_runs: None, tmp_path: Path
) -> None:
    source, dataset = tmp_path / "photos", tmp_path / "labels"
    write_block_photos(source, 4, seed=11)
    running_before = set(_runs_in_state(prefect_server, "RUNNING"))
    params = {
        "labeler": TINY_SPEC.model_dump(mode="json"),
        "filters": KEEP_ALL.model_dump(mode="json"),
        "options": {"batch_size": 1, "concurrency": 1, "max_in_flight": 1, "retries": 0, "thumbnails": 0},
    }
    env = prefect_server.env(
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_S), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"
    )
    script = REPO / "tests" / "support" / "flow_kill_script.py"
    killed = subprocess.run(
        [sys.executable, str(script), str(source), str(dataset), json.dumps(params), "2"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == KILLED_EXIT_CODE, killed.stdout[-2000:] + killed.stderr[-3000:]
    orphans = {i: r for i, r in _runs_in_state(prefect_server, "RUNNING").items() if i not in running_before}
    names = [r["name"] for r in orphans.values()]
    assert len(orphans) == 2 and any(r["parent_task_run_id"] for r in orphans.values()), names  # run + label-chunk

    deadline = time.monotonic() + WITHIN_S + 2 * HEARTBEAT_S + 60
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {i: api(prefect_server, f"/flow_runs/{i}")["state"]["type"] for i in orphans}
        if set(states.values()) == {"CRASHED"}:
            break
        time.sleep(2)
    assert set(states.values()) == {"CRASHED"}, states
