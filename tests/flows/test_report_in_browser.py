"""The run report's overlay thumbnails in Prefect's UI: a real ``prefect server``, a flow run against it, and the
artifact page opened in headless Chromium, where every thumbnail must have loaded (naturalWidth > 0)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.browser import chromium_binary, screenshot_when
from support.prefect_server import PrefectServer

REPO = Path(__file__).resolve().parents[2]

RUN_FLOW = textwrap.dedent(
    """
    import sys
    from flows.label_dataset import LabelingRunParameters, label_dataset
    from support.tiny_labeler import KEEP_ALL, TINY_SPEC

    options = LabelingRunParameters(thumbnails=6, batch_size=1)  # one image, so one thumbnail, per batch
    label_dataset(sys.argv[1], sys.argv[2], labeler=TINY_SPEC, filters=KEEP_ALL, options=options)
    """
)

# Every <img> of the rendered markdown, once the report's heading is on the page and the images have settled.
READY_JS = """(() => {
  const md = [...document.querySelectorAll('h1')].some(h => h.textContent.includes('Labeling run'));
  const imgs = [...document.images].filter(i => i.src.startsWith('data:image/jpeg'));
  return md && imgs.length >= 3 && imgs.every(i => i.complete);
})()"""
# The Artifacts tab of the run's page, once the report's card has painted its thumbnails.
CARD_READY_JS = """(() => {
  const tab = [...document.querySelectorAll('body *')]
    .find(e => e.children.length === 0 && e.textContent.trim() === 'Artifacts');
  if (tab && !window.artifactsTabOpened) { window.artifactsTabOpened = true; tab.click(); }
  const imgs = [...document.querySelectorAll('.artifact-card img')].filter(i => i.src.startsWith('data:image/jpeg'));
  return imgs.length >= 3 && imgs.every(i => i.complete);
})()"""
REPORT_JS = """[...document.images].filter(i => !i.src.startsWith('data:image/svg'))
  .map(i => ({src: i.src.slice(0, 40), naturalWidth: i.naturalWidth, complete: i.complete}))"""


def _report_artifact(server: PrefectServer) -> dict:
    """The newest labeling report: the server is shared with other tests' runs, which leave reports too."""
    query = {"artifacts": {"key": {"any_": ["label-dataset-report"]}}, "sort": "CREATED_DESC", "limit": 1}
    request = urllib.request.Request(
        f"{server.api_url}/artifacts/filter",
        data=json.dumps(query).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        [artifact] = json.loads(r.read())
    return artifact


def test_report_thumbnails_load_in_the_prefect_ui(prefect_server: PrefectServer, tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    source = tmp_path / "photos"
    source.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        rgb = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        rgb[:60, :80] = (230, 20, 20)
        rgb[60:, 80:] = (20, 20, 230)
        Image.fromarray(rgb).save(source / f"photo{i}.png")
    env = prefect_server.env(PYTHONPATH=f"{REPO}:{REPO / 'tests'}", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-c", RUN_FLOW, str(source), str(tmp_path / "labels")],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    artifact = _report_artifact(prefect_server)
    page = f"{prefect_server.url}/artifacts/artifact/{artifact['id']}"
    shot = tmp_path / "report-artifact.png"
    images = screenshot_when(page, READY_JS, shot, report_js=REPORT_JS, timeout_s=120)
    print(f"screenshot of {page}: {shot}")
    thumbnails = [i for i in images if i["src"].startswith("data:image/jpeg")]
    assert len(thumbnails) == 6, images  # the report's three, and the description's line above it
    assert all(i["complete"] and i["naturalWidth"] > 0 for i in thumbnails), images
    assert not any("/thumbnails/" in i["src"] for i in images)  # no local path left for the browser to miss
    assert shot.stat().st_size > 10_000

    # The run's Artifacts tab: the report's card shows the thumbnails too (its description's first line).
    tab = f"{prefect_server.url}/runs/flow-run/{artifact['flow_run_id']}"
    shot = tmp_path / "run-artifacts-tab.png"
    images = screenshot_when(tab, CARD_READY_JS, shot, report_js=REPORT_JS, timeout_s=120)
    print(f"screenshot of {tab}: {shot}")
    on_card = [i for i in images if i["src"].startswith("data:image/jpeg")]
    assert len(on_card) == 3 and all(i["complete"] and i["naturalWidth"] > 0 for i in on_card), images
