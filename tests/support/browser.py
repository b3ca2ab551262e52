"""Headless Chromium driven over the DevTools protocol: open a page, wait for a condition, screenshot it.

Only ``websockets`` (a Prefect dependency) and Debian's ``chromium``; no Selenium or Playwright download.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_binary() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Page:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == my_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


def screenshot_when(
    url: str,
    ready_js: str,
    screenshot: Path,
    *,
    report_js: str,
    timeout_s: float = 90.0,
    size: tuple[int, int] = (1400, 1800),
) -> Any:
    """Open ``url`` in headless Chromium, wait until ``ready_js`` is truthy, save a PNG, return ``report_js``'s value.

    On timeout the screenshot is still saved (to look at) and ``report_js``'s value is returned.
    """
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium not installed")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    process = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",  # tests may run as root in containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.loads(r.read()) if t["type"] == "page")
        return asyncio.run(_drive(target["webSocketDebuggerUrl"], url, ready_js, report_js, screenshot, timeout_s))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)


async def _drive(ws_url: str, url: str, ready_js: str, report_js: str, screenshot: Path, timeout_s: float) -> Any:
    import websockets

    async with websockets.connect(ws_url, max_size=64 * 2**20) as ws:
        page = _Page(ws)
        await page.call("Page.enable")
        await page.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if await page.evaluate(ready_js):
                    break
            except RuntimeError:
                pass  # the page is still loading
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # let the last images paint
        shot = await page.call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return await page.evaluate(report_js)
